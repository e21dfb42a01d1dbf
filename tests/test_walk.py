"""The walk's state and its step (lst.walk), and the schedules (lst.schedules)."""
import pytest
import torch
import torch.nn.functional as F

import lst
from lst.schedules import AdaptiveSchedule, FixedSchedule, newton_correction
from lst.walk import Proposal, confidence_and_grad, lst_step, start_walks
from tests.conftest import ROUNDING_MARGIN, small_cnn


def state_of(model, sources, targets, settings, extra=None):
    labels = lst.predict(model, sources)[0]
    walks = torch.arange(len(sources))
    init = lst.class_confidence_of(model, sources, labels)
    state = start_walks(model, sources, targets, labels, None, init, walks, settings,
                        walks.tolist(), None)
    state.extra.update(extra or {})
    return state


def test_keep_compacts_every_field_and_what_schedules_and_recorders_add():
    model = small_cnn(gain=30.0)
    g = torch.Generator().manual_seed(0)
    x, t = torch.rand(5, 3, 16, 16, generator=g), torch.rand(5, 3, 16, 16, generator=g)
    state = state_of(model, x, t, lst.LSTSettings(),
                     {"step": torch.arange(5.0), "reference": [[torch.arange(5) * 10]],
                      "by_name": {"a": torch.arange(5) + 100}})
    mask = torch.tensor([True, False, True, False, True])
    kept = state.keep(mask)
    assert torch.equal(kept.rows, torch.tensor([0, 2, 4]))
    assert torch.equal(kept.x, state.x[mask]) and torch.equal(kept.grad, state.grad[mask])
    assert torch.equal(kept.extra["step"], torch.tensor([0.0, 2.0, 4.0]))
    assert torch.equal(kept.extra["reference"][0][0], torch.tensor([0, 20, 40]))
    assert torch.equal(kept.extra["by_name"]["a"], torch.tensor([100, 102, 104]))
    assert kept.target_label is None
    state.extra["count"] = 3  # not a per-walk tensor: refused, never carried along misaligned
    with pytest.raises(TypeError, match="got int"):
        state.keep(mask)


@pytest.mark.kernels
def test_one_step_is_algorithm_1():
    """Projection, adversarial term, clamp, acceptance against p0 - pthresh, written out."""
    model = small_cnn(gain=30.0)
    g = torch.Generator().manual_seed(5)
    x, t = torch.rand(8, 3, 16, 16, generator=g), torch.rand(8, 3, 16, 16, generator=g)
    settings = lst.LSTSettings(step_size=0.5, pthresh=0.002, adv_step_size=2e-3)
    state = state_of(model, x, t, settings)
    x0, g0, y, p0 = state.x.clone(), state.grad.clone(), state.label, state.p0
    accept, _ = lst_step(model, state, FixedSchedule(settings), settings)

    gg = (g0 * g0).flatten(1).sum(1).view(-1, 1, 1, 1)
    d = t - x0
    d_perp = d - (g0 * d).flatten(1).sum(1).view(-1, 1, 1, 1) / gg * g0
    adv = (1e-3 * g0).clamp(-2e-3, 2e-3)
    proposal = (x0 + 0.5 * d_perp - adv).clamp(0, 1)
    p = F.softmax(model(proposal), 1).gather(1, y.view(-1, 1)).squeeze(1)
    expected = (p0 - p) < 0.002
    assert expected.any() and not expected.all()  # both outcomes are checked
    assert ((p0 - p - 0.002).abs() > ROUNDING_MARGIN).all()  # no decision within rounding
    assert torch.equal(accept, expected)
    torch.testing.assert_close(state.x, torch.where(expected.view(-1, 1, 1, 1), proposal, x0),
                               atol=1e-6, rtol=0)
    assert torch.equal(state.grad[~accept], g0[~accept])
    _, grad_at_proposal = confidence_and_grad(model, proposal, y)
    torch.testing.assert_close(state.grad[accept], grad_at_proposal[accept], atol=1e-6, rtol=1e-4)


def tried(state, move=None):
    """A `Proposal` for the schedule's update: `move` (default zeros) with the model's output at
    the current iterates."""
    return Proposal(torch.zeros_like(state.x) if move is None else move, state.conf, state.grad)


def test_the_adaptive_schedule_grows_shrinks_and_stops():
    model = small_cnn(gain=30.0)
    g = torch.Generator().manual_seed(2)
    x, t = torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    settings = lst.LSTSettings(schedule="adaptive", step_start=0.2, step_max=0.5, step_min=0.05,
                               stop_distance=0.3, stall_steps=0, retry=False)
    schedule = AdaptiveSchedule(settings)
    state = state_of(model, x, t, settings)
    schedule.start(state)
    assert torch.equal(state.extra["step"], torch.full((4,), 0.2))
    schedule.update(state, torch.tensor([True, False, True, False]), tried(state))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.3, 0.1, 0.3, 0.1]))
    schedule.update(state, torch.tensor([True, False, False, True]), tried(state))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.45, 0.05, 0.15, 0.15]))
    schedule.update(state, torch.tensor([True, False, False, False]), tried(state))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.5, 0.025, 0.075, 0.075]))
    stop = schedule.stopped(state)  # out of step size; and near the target
    assert stop.tolist() == [False, True, False, False]
    state.x = state.target * 0.9 + state.x * 0.1
    assert schedule.stopped(state).all()


def test_the_adaptive_schedule_starts_at_step_start_not_at_the_fixed_eta():
    """The paper's commands pass --step_size 1e-2 (the fixed schedule's eta); an adaptive walk
    that started there spent about ten passes growing to a useful step."""
    model = small_cnn(gain=30.0)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    settings = lst.LSTSettings(schedule="adaptive", step_size=1e-2, step_start=0.3)
    schedule = AdaptiveSchedule(settings)
    state = state_of(model, x, x.flip(0), settings)
    schedule.start(state)
    assert torch.equal(state.extra["step"], torch.full((3,), 0.3))
    assert lst.LSTSettings().step_start == 0.25
    with pytest.raises(ValueError, match="step_start"):
        lst.LSTSettings(step_start=1e-4)  # below step_min: the walk would stop at once


def test_a_run_of_refused_steps_is_not_a_stall():
    """The stall stop compares the distance left over the last stall_steps *accepted* steps: a
    walk whose steps are refused (its step size shrinking) has not stalled."""
    model = small_cnn(gain=30.0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    settings = lst.LSTSettings(schedule="adaptive", stall_steps=2, stall_tolerance=0.05,
                               retry=False, step_min=1e-6)
    schedule = AdaptiveSchedule(settings)
    state = state_of(model, x, x.flip(0), settings)
    schedule.start(state)
    refused = torch.tensor([False, False])
    schedule.update(state, torch.tensor([True, True]), tried(state))
    for _ in range(6):  # the iterate does not move: no progress at all
        assert not schedule.stopped(state).any()
        schedule.update(state, refused, tried(state))
    schedule.update(state, torch.tensor([True, False]), tried(state))
    assert not schedule.stopped(state).any()
    schedule.update(state, torch.tensor([True, False]), tried(state))
    assert schedule.stopped(state).tolist() == [True, False]  # 2 accepted steps, no progress


def test_a_refused_step_is_retried_once_corrected_before_the_step_shrinks():
    """Retry: after a first refusal the next move is the refused move plus a Newton step, with
    the gradient at the refused proposal, to p0 - pthresh/2; the step size is kept. A refused
    retry shrinks the step as before; an accepted one grows it."""
    model = small_cnn(gain=30.0)
    g = torch.Generator().manual_seed(6)
    x, t = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    settings = lst.LSTSettings(schedule="adaptive", step_start=0.2, corrector=False, retry=True,
                               pthresh=0.1)
    schedule = AdaptiveSchedule(settings)
    state = state_of(model, x, t, settings)
    schedule.start(state)
    direction = t - state.x
    torch.testing.assert_close(schedule.move(state, direction), 0.2 * direction)
    unit = state.grad / state.grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    move = 0.5 * unit  # up the loss: a move the level set refuses
    probs, grad = confidence_and_grad(model, (state.x + move).clamp(0, 1), state.label)
    conf = probs.gather(1, state.label.view(-1, 1)).squeeze(1)
    assert (conf < state.p0 - 0.05).all()
    schedule.update(state, torch.tensor([False, False, True]), Proposal(move, conf, grad))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.2, 0.2, 0.3]))
    corrected = move + newton_correction(grad, conf, state.p0 - 0.05, move)
    assert (corrected - move)[:2].abs().sum() > 0  # the correction is not nothing
    retried = schedule.move(state, direction)
    torch.testing.assert_close(retried[:2], corrected[:2])
    torch.testing.assert_close(retried[2], 0.3 * direction[2])
    schedule.update(state, torch.tensor([False, True, False]), Proposal(retried, conf, grad))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.1, 0.3, 0.3]))
    assert state.extra["retrying"].tolist() == [False, False, True]
