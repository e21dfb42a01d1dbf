import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lst
from lst.traversal import initial_noise
from tests.conftest import linear_classifier, small_cnn


def literal_lst(model, sources, labels, targets, *, step_size, iters, pthresh, adv_step_size,
                noise):
    """The paper's algorithm (§3) written out literally: forward+backward at x, then a forward
    at x', every step (docs/design.md, "The fused step")."""
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
        accept = (p0 - conf(proposal).detach()) < pthresh
        x = torch.where(accept.view(-1, 1, 1, 1), proposal, x)
    return x.detach()


def correctly_classified(model, x):
    return lst.predict(model, x)[0]


def test_fused_loop_equals_literal_loop(cnn, images):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    noise = initial_noise(sources.shape[1:], 4 / 255, 0, range(len(sources)))
    for adv in (None, 2e-3):
        kwargs = dict(step_size=0.2, iters=25, pthresh=0.01, adv_step_size=adv)
        fused = lst.level_set_traversal(cnn, sources, labels, targets, **kwargs)
        literal = literal_lst(cnn, sources, labels, targets, noise=noise, **kwargs)
        # the comparison means something only if steps were both accepted and rejected
        rate = fused.accept_rate
        assert (rate < 1).any() and (rate > 0).any(), rate
        torch.testing.assert_close(fused.final_images, literal, atol=1e-5, rtol=0)


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


def test_results_do_not_depend_on_the_batch(cnn, images):
    sources, targets = images
    labels = correctly_classified(cnn, sources)
    kwargs = dict(iters=15, adv_step_size=1 / 255, get_confs_over_path=True, log_step=5)
    ids = torch.arange(100, 108)
    whole = lst.level_set_traversal(cnn, sources, labels, targets, sample_ids=ids, **kwargs)
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
