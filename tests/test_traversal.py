import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lst
from lst.traversal import initial_noise
from tests.conftest import (ROUNDING_MARGIN, acceptance_margin, frozen,
                            linear_classifier, small_cnn)


def literal_lst(model, sources, labels, targets, *, step_size, iters, pthresh, adv_step_size,
                noise, margins=None):
    """The paper's algorithm (§3) written out literally: forward+backward at x, then a forward
    at x', every step (docs/design.md, "The fused step"). margins: a list that gets, at every
    step, each walk's |p0 - p(x') - pthresh|, how far its decision was from the threshold."""
    def conf(x):
        return torch.softmax(model(x), 1).gather(1, labels.view(-1, 1)).squeeze(1)

    p0 = conf(sources).detach()
    x = (sources + noise).clamp(0, 1)
    a = torch.zeros_like(x)
    for _ in range(iters):
        xg = x.clone().requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(xg), labels, reduction="sum"), xg)
        d = targets - x
        gg = (g * g).flatten(1).sum(1).view(-1, 1, 1, 1)
        gd = (g * d).flatten(1).sum(1).view(-1, 1, 1, 1)
        d_perp = torch.where(gg > 0, d - gd / gg * g, d)
        if adv_step_size is not None:
            a = (a + adv_step_size / 2 * g).clamp(-adv_step_size, adv_step_size)
        proposal = (x + step_size * d_perp - a).clamp(0, 1)
        drop = p0 - conf(proposal).detach()
        if margins is not None:
            margins.append((drop - pthresh).abs())
        accept = drop < pthresh
        x = torch.where(accept.view(-1, 1, 1, 1), proposal, x)
    return x.detach()


def correctly_classified(model, x):
    return lst.predict(model, x)[0]


@pytest.mark.kernels
def test_fused_loop_equals_literal_loop(cnn, images):
    """Closeness, not equality: the literal loop scores each proposal in a forward of its own,
    without autograd (other kernels on some CPUs). A walk with a decision within rounding of the
    threshold may then part from the fused one for good, so the walks are compared where every
    decision is at least ROUNDING_MARGIN from it; rounding alone keeps them within 1e-5."""
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    noise = initial_noise(sources.shape[1:], 4 / 255, 0, range(len(sources)))
    for adv in (None, 2e-3):
        kwargs = dict(step_size=0.2, iters=25, pthresh=0.01, adv_step_size=adv)
        fused = lst.level_set_traversal(cnn, sources, labels, targets, **kwargs)
        margins = []
        literal = literal_lst(cnn, sources, labels, targets, noise=noise, margins=margins, **kwargs)
        clear = torch.stack(margins, dim=1).amin(dim=1) > ROUNDING_MARGIN
        # the comparison means something only if steps were both accepted and rejected
        rate = fused.accept_rate[clear]
        assert clear.sum() >= 4 and (rate < 1).any() and (rate > 0).any(), (clear, rate)
        torch.testing.assert_close(fused.final_images[clear], literal[clear], atol=1e-5, rtol=0)


def test_one_forward_backward_per_iteration(cnn, images):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    calls = {"forward": 0, "backward": 0}
    cnn.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    cnn[0].register_full_backward_hook(
        lambda *_: calls.__setitem__("backward", calls["backward"] + 1))
    lst.level_set_traversal(cnn, sources, labels, targets, iters=12)
    assert calls["backward"] == 12 + 1
    assert calls["forward"] == 12 + 1 + 1  # plus the clean forward for p0


def test_kept_outputs_stay_in_the_level_set(cnn, images):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    labels[0] = (labels[0] + 1) % 10  # one misclassified source
    pthresh = 0.05
    res = lst.level_set_traversal(cnn, sources, labels, targets, iters=30, pthresh=pthresh,
                                  adv_step_size=1 / 255)
    assert not res.kept[0] and res.kept[1:].all()
    torch.testing.assert_close(res.final_images[0], sources[0])  # skipped: unchanged
    kept = res.kept
    assert (res.final_confs[kept] >= res.init_confs[kept] - pthresh).all()
    recomputed = lst.class_confidence_of(cnn, res.final_images, labels)
    torch.testing.assert_close(res.final_confs, recomputed, atol=1e-5, rtol=0)
    # and it did move towards the targets
    before = (sources - targets).flatten(1).norm(dim=1)
    after = (res.final_images - targets).flatten(1).norm(dim=1)
    assert (after[kept] < before[kept]).all()


def test_no_nan_on_a_saturated_model(images):
    sources, targets = images
    model = small_cnn(gain=1e6)
    labels = correctly_classified(model, sources)
    res = lst.level_set_traversal(model, sources, labels, targets, iters=10,
                                  adv_step_size=1 / 255, get_widths=True, width_distances=(1,),
                                  width_directions=8, log_step=5)
    assert torch.isfinite(res.final_images).all()
    assert torch.isfinite(res.widths).all()
    # zero gradient: d_perp = d, so the step goes straight at the target
    g = torch.zeros(2, 3, 4, 4)
    d = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(lst.orthogonal_step(g, d), d)


def test_tiny_gradients_do_not_underflow():
    g = torch.randn(2, 3, 8, 8) * 1e-30
    d = torch.randn(2, 3, 8, 8)
    step = lst.orthogonal_step(g, d)
    assert torch.isfinite(step).all()
    assert (step * g / g.abs().amax()).flatten(1).sum(1).abs().max() < 1e-4


@pytest.mark.kernels
def test_results_do_not_depend_on_the_batch(cnn, images):
    """Closeness: a sample's noise and target are its own in any batch, its arithmetic is the
    same up to float rounding (the kernels depend on the batch size on some CPUs). Every
    decision of these walks is far from the threshold (checked), so rounding cannot move one,
    and the blind spots agree to 1e-5 (1/400 of the 8-bit step they are saved in)."""
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    kwargs = dict(iters=15, adv_step_size=1 / 255, get_confs_over_path=True, log_step=1)
    ids = torch.arange(100, 108)
    whole = lst.level_set_traversal(cnn, sources, labels, targets, sample_ids=ids, **kwargs)
    assert acceptance_margin(whole, lst.LSTSettings().pthresh) > ROUNDING_MARGIN
    for k in (5, 2):
        one = lst.level_set_traversal(cnn, sources[k:k + 1], labels[k:k + 1],
                                      targets[k:k + 1], sample_ids=ids[k:k + 1], **kwargs)
        torch.testing.assert_close(one.final_images[0], whole.final_images[k], atol=1e-5, rtol=0)
    reordered = lst.level_set_traversal(cnn, sources.flip(0), labels.flip(0), targets.flip(0),
                                        sample_ids=ids.flip(0), **kwargs)
    torch.testing.assert_close(reordered.final_images.flip(0), whole.final_images,
                               atol=1e-5, rtol=0)
    other_seed = lst.level_set_traversal(cnn, sources, labels, targets, sample_ids=ids, seed=1,
                                         **kwargs)
    assert not torch.allclose(other_seed.final_images, whole.final_images)


def test_zero_noise_zero_iters_returns_the_source(cnn, images):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    res = lst.level_set_traversal(cnn, sources, labels, targets, iters=0, init_noise=0)
    assert torch.equal(res.final_images, sources)
    torch.testing.assert_close(res.final_confs, res.init_confs)


def test_initial_noise_width():
    noise = initial_noise((3, 8, 8), 4 / 255, seed=0, sample_ids=[0, 1])
    assert noise.abs().max() <= 2 / 255 + 1e-7 and noise.abs().max() > 1.5 / 255
    assert not torch.equal(noise[0], noise[1])
    torch.testing.assert_close(initial_noise((3, 8, 8), 4 / 255, 0, [1])[0], noise[1])


def test_linear_model_step_is_orthogonal_and_approaches_target():
    g = torch.Generator().manual_seed(0)
    dim = 3 * 8 * 8
    model = linear_classifier(torch.randn(4, dim, generator=g) * 0.05, torch.zeros(4))
    sources = 0.5 + 0.1 * (torch.rand(6, 3, 8, 8, generator=g) - 0.5)
    targets = 0.5 + 0.1 * (torch.rand(6, 3, 8, 8, generator=g) - 0.5)
    labels = correctly_classified(model, sources)
    # gradient of CE for a linear model: W^T (softmax - onehot)
    weight = model[1].weight
    p = torch.softmax(model(sources), 1)
    grad = ((p - F.one_hot(labels, 4).float()) @ weight).view_as(sources)
    res = lst.level_set_traversal(model, sources, labels, targets, iters=1, init_noise=0,
                                  step_size=0.1, pthresh=1.0)
    step = (res.final_images - sources).flatten(1)
    cosine = F.cosine_similarity(step, grad.flatten(1), dim=1)
    assert cosine.abs().max() < 1e-4
    assert (step.norm(dim=1) > 0).all()
    before = (sources - targets).flatten(1).norm(dim=1)
    after = (res.final_images - targets).flatten(1).norm(dim=1)
    assert (after < before).all()


def test_recordings_are_taken_before_the_step_at_multiples_of_log_step(cnn, images):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    res = lst.level_set_traversal(cnn, sources, labels, targets, iters=23, log_step=5,
                                  get_confs_over_path=True, get_images=True, get_widths=True,
                                  width_distances=(0.5, 1.0), width_directions=16)
    assert res.log_iters.tolist() == [0, 5, 10, 15, 20]
    n = len(sources)
    assert res.confs_over_path.shape == (n, 5, 2)
    assert res.images_over_path.shape == (n, 5, 3, 16, 16)
    assert res.images_over_path.dtype == torch.uint8
    assert res.widths.shape == (n, 5, 3, 2)
    start = (sources + initial_noise(sources.shape[1:], 4 / 255, 0, range(n))).clamp(0, 1)
    torch.testing.assert_close(res.confs_over_path[:, 0, 0],
                               lst.class_confidence_of(cnn, start, labels), atol=1e-6, rtol=0)
    target_labels = lst.predict(cnn, targets)[0]
    torch.testing.assert_close(res.confs_over_path[:, 0, 1],
                               lst.class_confidence_of(cnn, start, target_labels),
                               atol=1e-6, rtol=0)
    assert (res.images_over_path[:, 0].float() - start * 255).abs().max() <= 0.5 + 1e-4
    torch.testing.assert_close(res.widths[:, :, 0, 0], res.confs_over_path[:, :, 0],
                               atol=1e-5, rtol=0)


def test_settings_object_and_keywords_give_the_same_traversal(images):
    model = small_cnn(gain=100.0)
    x, t = images
    y = lst.predict(model, x)[0]
    settings = lst.LSTSettings(iters=5, step_size=0.1, adv_step_size=0.01)
    by_object = lst.level_set_traversal(model, x, y, t, settings)
    by_keywords = lst.level_set_traversal(model, x, y, t, iters=5, step_size=0.1, adv_step_size=0.01)
    overridden = lst.level_set_traversal(model, x, y, t, lst.LSTSettings(iters=99), iters=5,
                                         step_size=0.1, adv_step_size=0.01)
    for other in (by_keywords, overridden):
        torch.testing.assert_close(by_object.final_images, other.final_images, rtol=0, atol=0)
    with pytest.raises(TypeError):
        lst.level_set_traversal(model, x, y, t, no_such_setting=1)


@pytest.mark.parametrize("bad", [dict(step_size=0), dict(step_size=float("nan")),
                                 dict(pthresh=1.5), dict(adv_step_size=float("inf")),
                                 dict(init_noise=-1), dict(width_distances=(1, -1)),
                                 dict(iters=-1)])
def test_settings_refuse_values_that_mean_nothing(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        lst.LSTSettings(**bad)


def test_a_model_in_train_mode_is_walked_in_eval_mode_and_given_back_unchanged():
    """BatchNorm in train mode would normalise by the batch and update its running statistics:
    the tool measures the model as it predicts (eval) and restores every module's mode."""
    from lst.experiments import run_full_eval
    from lst.shapes import ShapesDataset
    from models import load_model

    model, _ = load_model("smallcnn-normal", "shapes")
    dataset = ShapesDataset("test", size=60)
    settings = lst.LSTSettings(iters=4, get_widths=True, width_distances=(1.0,), width_directions=4,
                           log_step=2)
    expected, _ = run_full_eval(model, dataset, settings, num_samples=4, rounds=2,
                                get_final_imgs=True)
    model.train()
    model.features[1].eval()  # a mixed state, restored module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got, _ = run_full_eval(model, dataset, settings, num_samples=4, rounds=2, get_final_imgs=True)
    for key in ("final_confs", "l2", "widths"):
        np.testing.assert_array_equal(got[key], expected[key])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model.features[1].training and model.features[0].training


# The step schedule (docs/design.md, "The step schedule")

def fused_fixed_reference(model, sources, labels, targets, *, step_size, iters, pthresh,
                          adv_step_size, noise, every_iterate=None):
    """The engine's loop as it was before the adaptive schedule existed (fp32), kept verbatim
    so that the fixed schedule can be checked bit for bit against it. every_iterate: a list
    that gets x at the start and after every iteration."""
    record = every_iterate.append if every_iterate is not None else (lambda _: None)
    def conf_and_grad(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x).float()
            probs = torch.softmax(logits.detach(), dim=1)
            grad, = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x)
        return probs, grad

    p0 = lst.class_confidence_of(model, sources, labels)
    x = (sources + noise).clamp(0, 1)
    adv = torch.zeros_like(x)
    probs, grad = conf_and_grad(x)
    conf = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    record(x)
    for _ in range(iters):
        d_perp = lst.traversal.orthogonal_step(grad, targets - x)
        if adv_step_size is not None:
            adv = (adv + (adv_step_size / 2) * grad).clamp(-adv_step_size, adv_step_size)
        proposal = (x + step_size * d_perp - adv).clamp(0, 1)
        new_probs, new_grad = conf_and_grad(proposal)
        new_conf = new_probs.gather(1, labels.view(-1, 1)).squeeze(1)
        accept = (p0 - new_conf) < pthresh
        a4 = accept.view(-1, 1, 1, 1)
        x = torch.where(a4, proposal, x)
        grad = torch.where(a4, new_grad, grad)
        conf = torch.where(accept, new_conf, conf)
        record(x)
    return x, conf


@pytest.mark.kernels
def test_the_fixed_schedule_is_bit_for_bit_the_engine_of_before(cnn, images):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    noise = initial_noise(sources.shape[1:], 4 / 255, 0, range(len(sources)))
    kwargs = dict(step_size=0.2, iters=25, pthresh=0.01, adv_step_size=2e-3)
    res = lst.level_set_traversal(cnn, sources, labels, targets, schedule="fixed", **kwargs)
    x, conf = fused_fixed_reference(cnn, sources, labels, targets, noise=noise, **kwargs)
    assert (res.accept_rate < 1).any() and (res.accept_rate > 0).any()
    assert torch.equal(res.final_images, x) and torch.equal(res.final_confs, conf)
    assert (res.passes == 25 + 1).all()
    left = (x - targets).flatten(1).norm(dim=1) / (sources - targets).flatten(1).norm(dim=1)
    torch.testing.assert_close(res.distance_left, left, atol=1e-6, rtol=0)
    # the fixed schedule's run key is the one it had before the schedule existed
    assert "schedule" not in lst.LSTSettings().as_dict()
    assert lst.LSTSettings(schedule="adaptive").as_dict()["schedule"] == "adaptive"


@pytest.mark.parametrize("corrector,retry", [(False, False), (True, False), (True, True)])
def test_the_adaptive_schedule_keeps_every_pair_in_the_level_set(cnn, images, corrector, retry):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    pthresh = 0.01
    res = lst.level_set_traversal(cnn, sources, labels, targets, iters=60, pthresh=pthresh,
                                  adv_step_size=1 / 255, schedule="adaptive", step_size=0.2,
                                  step_start=0.2, corrector=corrector, retry=retry)
    assert (res.accept_rate < 1).any()  # the test means something only if steps were refused
    recomputed = lst.class_confidence_of(cnn, res.final_images, labels)
    torch.testing.assert_close(res.final_confs, recomputed, atol=1e-5, rtol=0)
    assert (recomputed > res.init_confs - pthresh).all()


class Bump(torch.nn.Module):
    """Two classes; the source class's logit is -k |x - c|^2: its level sets are spheres around
    c, so every step orthogonal to the gradient leaves the sphere and lowers the confidence."""

    def __init__(self, centre: torch.Tensor, k: float = 5.0):
        super().__init__()
        self.register_buffer("centre", centre)
        self.k = k

    def forward(self, x):
        r2 = (x - self.centre).flatten(1).pow(2).sum(dim=1)
        return torch.stack([2.0 - self.k * r2, torch.zeros_like(r2)], dim=1)


def test_stopped_samples_leave_the_batch():
    """Pairs whose target is their source stop at once (nothing left to go); on a level set
    that refuses every step, the others stop when their step size falls below step_min: each
    pass holds only the samples still walking, and `passes` counts them."""
    g = torch.Generator().manual_seed(0)
    centre = torch.full((3, 4, 4), 0.5)
    sources = (centre + 0.05 * torch.randn(6, 3, 4, 4, generator=g)).clamp(0, 1)
    targets = torch.rand(6, 3, 4, 4, generator=g)
    targets[:3] = sources[:3]
    model = frozen(Bump(centre))
    labels = torch.zeros(6, dtype=torch.int64)
    batches = []
    model.register_forward_hook(lambda m, inputs, out: batches.append(len(inputs[0])))
    settings = dict(iters=100, init_noise=0.0, pthresh=1e-9, step_start=0.01, step_min=1e-3,
                    step_shrink=0.5, retry=False, corrector=False)
    res = lst.level_set_traversal(model, sources, labels, targets, schedule="adaptive", **settings)
    assert res.kept.all()
    # 0.01 halves below 1e-3 after 4 refused steps: 1 + 4 passes; the others only the first
    assert res.passes.tolist() == [1, 1, 1, 5, 5, 5]
    assert batches == [6, 6, 3, 3, 3, 3]  # clean p0, start, then only the walking ones
    assert sum(batches[1:]) == int(res.passes.sum())
    assert (res.distance_left[:3] == 0).all() and (res.distance_left[3:] == 1).all()
    torch.testing.assert_close(res.final_images, sources)  # nothing was accepted
    fixed = lst.level_set_traversal(model, sources, labels, targets, **settings)
    assert (fixed.passes == 101).all()


def test_on_a_known_level_set_adaptive_needs_far_fewer_passes():
    """A linear model's level sets are hyperplanes: with targets on the source's level set, every
    orthogonal step is accepted and the fixed schedule closes (1 - eta) of the distance per
    step. The adaptive one reaches at least that closeness in a quarter of the passes or less."""
    g = torch.Generator().manual_seed(0)
    dim = 3 * 8 * 8
    weight = torch.randn(4, dim, generator=g) * 0.05
    model = linear_classifier(weight, torch.zeros(4))
    sources = 0.5 + 0.1 * (torch.rand(6, 3, 8, 8, generator=g) - 0.5)
    shift = 0.1 * (torch.rand(6, dim, generator=g) - 0.5)
    shift -= shift @ torch.linalg.pinv(weight) @ weight  # no change of any logit
    targets = sources + shift.view_as(sources)
    labels = correctly_classified(model, sources)
    common = dict(init_noise=0.0, pthresh=0.05, step_size=0.01, get_confs_over_path=True,
                  log_step=1)
    fixed = lst.level_set_traversal(model, sources, labels, targets, iters=400, **common)
    torch.testing.assert_close(fixed.distance_left, torch.full((6,), 0.99 ** 400), atol=1e-3,
                               rtol=0)
    adaptive = lst.level_set_traversal(model, sources, labels, targets, iters=400,
                                       schedule="adaptive", stop_distance=0.99 ** 400, **common)
    assert (adaptive.distance_left <= 0.99 ** 400).all()
    assert (adaptive.passes * 4 <= fixed.passes).all(), adaptive.passes
    # the recorded distance is the walk's own, and holds still once the sample stopped
    walked = adaptive.distance_over_path
    assert (walked[:, 1:] <= walked[:, :-1] + 1e-6).all()
    torch.testing.assert_close(walked[:, -1], adaptive.distance_left, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [dict(schedule="fast"), dict(step_grow=0.5),
                                 dict(step_shrink=1.0), dict(step_max=2.0),
                                 dict(step_min=0.6, step_max=0.5), dict(stop_distance=1.0),
                                 dict(schedule="adaptive", step_start=1e-4)])
def test_schedule_settings_refuse_values_that_mean_nothing(bad):
    with pytest.raises(ValueError):
        lst.LSTSettings(**bad)


def unreachable_floor(offset: float):
    """Two classes of a linear model: the gradient is always along u = w0 - w1, so the part
    `offset` of x_t - x along u can never be walked. Returns (model, sources, labels, targets,
    floor), floor (4,) the distance left that no walk can go below."""
    g = torch.Generator().manual_seed(0)
    dim = 3 * 8 * 8
    weight = torch.randn(2, dim, generator=g) * 0.05
    model = linear_classifier(weight, torch.zeros(2))
    u = (weight[0] - weight[1]) / (weight[0] - weight[1]).norm()
    sources = 0.5 + 0.1 * (torch.rand(4, 3, 8, 8, generator=g) - 0.5)
    shift = 0.1 * (torch.rand(4, dim, generator=g) - 0.5)
    shift -= (shift @ u).view(-1, 1) * u
    targets = sources + (shift + offset * u).view_as(sources)
    floor = offset / (shift + offset * u).norm(dim=1)
    return model, sources, correctly_classified(model, sources), targets, floor


def test_a_walk_that_can_get_no_closer_stops_when_it_stalls():
    """Two classes of a linear model: the gradient is always along u = w0 - w1, so the part of
    x_t - x along u can never be walked. The distance left tends to that floor; the adaptive
    walk stops once it gains less than stall_tolerance over stall_steps steps, near the floor
    and long before its budget."""
    model, sources, labels, targets, floor = unreachable_floor(0.02)
    res = lst.level_set_traversal(model, sources, labels, targets, iters=400, init_noise=0.0,
                                  pthresh=0.5, step_size=0.01, schedule="adaptive",
                                  stall_steps=20, stall_tolerance=0.02)
    assert (res.passes < 200).all(), res.passes
    assert (res.distance_left >= floor - 1e-4).all()
    assert (res.distance_left <= floor * 1.05).all(), (res.distance_left, floor)
    never = lst.level_set_traversal(model, sources, labels, targets, iters=400, init_noise=0.0,
                                    pthresh=0.5, step_size=0.01, schedule="adaptive",
                                    stall_steps=0)
    assert (never.passes == 401).all()


def progress_of(x, sources, targets):
    """1 - |x - x_t| / |x_s - x_t| per sample."""
    return 1 - (targets - x).flatten(1).norm(dim=1) / (targets - sources).flatten(1).norm(dim=1)


@pytest.mark.kernels
def test_matched_iterates_are_the_walks_own(cnn, images):
    """The iterate recorded at fraction f is the first iterate with progress >= f of the same
    walk recorded at every iterate (the engine of before: the same arithmetic, so equality); a
    fraction the walk never reaches is -1, NaN and zeros."""
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    noise = initial_noise(sources.shape[1:], 4 / 255, 0, range(len(sources)))
    kwargs = dict(step_size=0.2, iters=25, pthresh=0.01, adv_step_size=None)
    fractions = (0.2, 0.4, 0.6, 0.8, 0.95)
    fused = lst.level_set_traversal(cnn, sources, labels, targets, matched_fractions=fractions,
                                    **kwargs)
    iterates = []
    fused_fixed_reference(cnn, sources, labels, targets, noise=noise, every_iterate=iterates,
                          **kwargs)
    walked = torch.stack(iterates, dim=1)  # (N, iters+1, C,H,W)
    progress = torch.stack([progress_of(x, sources, targets) for x in iterates], dim=1)
    for f, fraction in enumerate(fractions):
        for k in range(len(sources)):
            reached = (progress[k] >= fraction).nonzero().flatten()
            if len(reached) == 0:
                assert fused.matched_iters[k, f] == -1
                assert torch.isnan(fused.matched_confs[k, f])
                assert (fused.matched_images[k, f] == 0).all()
                continue
            first = int(reached[0])
            assert fused.matched_iters[k, f] == first
            assert torch.equal(fused.matched_images[k, f], walked[k, first])
            assert fused.matched_confs[k, f] >= fused.init_confs[k] - kwargs["pthresh"]
    # the test means something only if some fractions were reached late and some never
    assert (fused.matched_iters > 0).any() and (fused.matched_iters == -1).any()
    assert fused.matched_iters.shape == (len(sources), len(fractions))
    # recording changes nothing of the walk
    plain = lst.level_set_traversal(cnn, sources, labels, targets, **kwargs)
    assert torch.equal(plain.final_images, fused.final_images)


def test_a_walk_that_stops_short_of_f_is_reported_as_not_reaching_it():
    """The stalling walk of a linear model (an unreachable floor of distance left) stops under
    the adaptive schedule: fractions beyond 1 - floor are -1 for every sample; those below are
    reached, and their iterate is one the walk passed (progress >= f)."""
    model, sources, labels, targets, floor = unreachable_floor(0.04)
    assert (floor > 0.06).all() and (floor < 0.5).all()  # f = 0.95 is out of reach
    fractions = (0.5, 0.95)
    for schedule in ("fixed", "adaptive"):
        res = lst.level_set_traversal(model, sources, labels, targets, iters=300, init_noise=0.0,
                                      pthresh=0.5, step_size=0.02, schedule=schedule,
                                      matched_fractions=fractions)
        assert (res.matched_iters[:, 1] == -1).all() and torch.isnan(res.matched_confs[:, 1]).all()
        assert (res.matched_iters[:, 0] > 0).all()
        got = progress_of(res.matched_images[:, 0], sources, targets)
        assert (got >= 0.5 - 1e-6).all()
    assert (res.passes < 301).all()  # the adaptive walks did stop early


@pytest.mark.kernels
def test_restarts_reproduce_and_differ():
    """Restart r of a sample draws its own noise: the same call twice gives the same walks,
    restart 0 is the walk without restarts, and other restarts start (and end) elsewhere."""
    model = small_cnn(gain=100.0)
    g = torch.Generator().manual_seed(3)
    sources, targets = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    labels = correctly_classified(model, sources)
    walks = [t.repeat_interleave(3, dim=0) for t in (sources, labels, targets)]
    ids, restarts = [0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2] * 3
    kwargs = dict(step_size=0.1, iters=10, pthresh=0.05)
    first = lst.level_set_traversal(model, *walks, sample_ids=ids, restarts=restarts, **kwargs)
    again = lst.level_set_traversal(model, *walks, sample_ids=ids, restarts=restarts, **kwargs)
    assert torch.equal(first.final_images, again.final_images)
    # the walks without restarts in the same batch (each pair three times, every walk with the
    # noise of a walk without restarts): the same arithmetic, so restart 0 is them bit for bit
    alone = lst.level_set_traversal(model, *walks, sample_ids=ids, **kwargs)
    assert torch.equal(first.final_images[0::3], alone.final_images[0::3])
    noise = initial_noise(sources.shape[1:], 4 / 255, 0, ids, restarts)
    for k in range(3):
        block = noise[3 * k:3 * k + 3].flatten(1)
        assert not torch.equal(block[0], block[1]) and not torch.equal(block[1], block[2])
        ends = first.final_images[3 * k:3 * k + 3].flatten(1)
        assert (ends[0] - ends[1]).norm() > 0 and (ends[1] - ends[2]).norm() > 0


def mean_pairwise(x):
    """Mean distance between the rows of (K, ...)."""
    flat = x.flatten(1)
    k = len(flat)
    return torch.pdist(flat).sum() / (k * (k - 1) / 2)


def test_diversity_spreads_the_restarts_and_keeps_the_level_set():
    """On a linear model every orthogonal step is accepted and all restarts of a pair converge
    to the target; the diversity push keeps them apart (spread several times larger), and every
    restart still ends with confidence >= p0 - pthresh."""
    g = torch.Generator().manual_seed(0)
    dim = 3 * 8 * 8
    weight = torch.randn(4, dim, generator=g) * 0.05
    model = linear_classifier(weight, torch.zeros(4))
    source = 0.5 + 0.1 * (torch.rand(1, 3, 8, 8, generator=g) - 0.5)
    shift = 0.2 * (torch.rand(1, dim, generator=g) - 0.5)
    target = (source + shift.view_as(source)).clamp(0, 1)
    label = correctly_classified(model, source)
    k = 4
    walks = [t.repeat_interleave(k, dim=0) for t in (source, label, target)]
    kwargs = dict(step_size=0.05, iters=150, pthresh=0.05, sample_ids=[0] * k,
                  restarts=list(range(k)), groups=torch.zeros(k, dtype=torch.int64))
    plain = lst.level_set_traversal(model, *walks, **kwargs)
    pushed = lst.level_set_traversal(model, *walks, diversity=0.2, **kwargs)
    spread_plain, spread_pushed = mean_pairwise(plain.final_images), mean_pairwise(pushed.final_images)
    assert spread_pushed > 3 * spread_plain, (spread_plain, spread_pushed)
    for res in (plain, pushed):
        assert (res.final_confs > res.init_confs - 0.05).all()
        recomputed = lst.class_confidence_of(model, res.final_images, walks[1])
        assert (recomputed > res.init_confs - 0.05).all()


def test_diversity_does_nothing_where_it_cannot():
    """Guards: a walk alone in its group is never pushed (bit-identical to no diversity), and
    on a level set that refuses every step (Bump) the pushed walks go nowhere either."""
    model = small_cnn(gain=100.0)
    g = torch.Generator().manual_seed(4)
    sources, targets = torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    labels = correctly_classified(model, sources)
    alone = dict(step_size=0.1, iters=10, pthresh=0.05, groups=torch.arange(4))
    assert torch.equal(lst.level_set_traversal(model, sources, labels, targets, **alone).final_images,
                       lst.level_set_traversal(model, sources, labels, targets, diversity=0.5,
                                               **alone).final_images)
    centre = torch.full((3, 4, 4), 0.5)
    bump = frozen(Bump(centre))
    source = centre.unsqueeze(0) + 0.01
    walks = [source.repeat(3, 1, 1, 1), torch.zeros(3, dtype=torch.int64),
             torch.rand(3, 3, 4, 4, generator=g)]
    together = dict(step_size=0.05, iters=20, pthresh=1e-9, sample_ids=[0, 0, 0],
                    restarts=[0, 1, 2], groups=torch.zeros(3, dtype=torch.int64))
    res = lst.level_set_traversal(bump, *walks, diversity=0.5, **together)
    assert (res.accept_rate == 0).all()
    assert torch.equal(res.final_images,
                       lst.level_set_traversal(bump, *walks, **together).final_images)


@pytest.mark.parametrize("bad", [dict(diversity=-0.1), dict(diversity=float("nan")),
                                 dict(matched_fractions=(0.5, 1.0)),
                                 dict(matched_fractions=(0.0,))])
def test_restart_and_matched_settings_refuse_values_that_mean_nothing(bad):
    with pytest.raises(ValueError):
        lst.LSTSettings(**bad)


def test_new_settings_at_their_defaults_leave_run_keys_as_they_were():
    assert "diversity" not in lst.LSTSettings().as_dict()
    assert "matched_fractions" not in lst.LSTSettings().as_dict()
    on = lst.LSTSettings(diversity=0.1, matched_fractions=(0.9, 0.25)).as_dict()
    assert on["diversity"] == 0.1 and on["matched_fractions"] == [0.25, 0.9]
