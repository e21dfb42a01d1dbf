"""The walk's state and its step (lst.walk), and the schedules (lst.schedules)."""
import pytest
import torch
import torch.nn.functional as F

import lst
from lst.schedules import AdaptiveSchedule, FixedSchedule
from lst.walk import confidence_and_grad, lst_step, start_walks
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
    accept = lst_step(model, state, FixedSchedule(settings), settings)

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


def test_the_adaptive_schedule_grows_shrinks_and_stops():
    model = small_cnn(gain=30.0)
    g = torch.Generator().manual_seed(2)
    x, t = torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    settings = lst.LSTSettings(schedule="adaptive", step_size=0.2, step_max=0.5, step_min=0.05,
                               stop_distance=0.3, stall_steps=0)
    schedule = AdaptiveSchedule(settings)
    state = state_of(model, x, t, settings)
    schedule.start(state)
    assert torch.equal(state.extra["step"], torch.full((4,), 0.2))
    schedule.update(state, torch.tensor([True, False, True, False]))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.3, 0.1, 0.3, 0.1]))
    schedule.update(state, torch.tensor([True, False, False, True]))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.45, 0.05, 0.15, 0.15]))
    schedule.update(state, torch.tensor([True, False, False, False]))
    torch.testing.assert_close(state.extra["step"], torch.tensor([0.5, 0.025, 0.075, 0.075]))
    stop = schedule.stopped(state)  # out of step size; and near the target
    assert stop.tolist() == [False, True, False, False]
    state.x = state.target * 0.9 + state.x * 0.1
    assert schedule.stopped(state).all()
