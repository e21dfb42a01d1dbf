"""Layer scores: equal to a direct computation with hooks, 1 at the source and 0 at the target,
recorded along the walk, and default layers per architecture."""
import numpy as np
import pytest
import timm
import torch
import torchvision

import lst
from lst.layers import default_layers, layer_scores, resolve_layers
from models.architectures import ResNet20, SmallCNN, vit
from tests.conftest import small_cnn


def direct_scores(model, images, sources, targets, names):
    """Cosine-distance scores computed by hand: hooks filled by one forward per image set."""
    modules = dict(model.named_modules())
    out = np.zeros((len(images), len(names)))
    for k, name in enumerate(names):
        seen = []
        handle = modules[name].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        with torch.no_grad():
            for x in (images, sources, targets):
                model(x)
        handle.remove()
        h, h_s, h_t = (t.flatten(1).double().numpy() for t in seen)
        for n in range(len(images)):
            def dist(a, b):
                return 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            d_s, d_t = dist(h[n], h_s[n]), dist(h[n], h_t[n])
            out[n, k] = d_t / (d_s + d_t)
    return out


@pytest.mark.kernels
def test_layer_scores_equal_a_direct_computation_with_hooks(images):
    model = small_cnn(gain=100.0)
    sources, targets = images
    mixed = 0.5 * sources + 0.5 * targets
    names = ["1", "4", "6"]
    np.testing.assert_allclose(layer_scores(model, mixed, sources, targets, names),
                               direct_scores(model, mixed, sources, targets, names), atol=1e-5)


def test_the_input_layer_scores_the_pixels(images):
    """"input" is the image itself: its score is the cosine ratio on the flattened pixels."""
    model = small_cnn(gain=100.0)
    sources, targets = images
    mixed = 0.7 * sources + 0.3 * targets
    h, h_s, h_t = (x.flatten(1).double().numpy() for x in (mixed, sources, targets))

    def dist(a, b):
        return 1 - (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    d_s, d_t = dist(h, h_s), dist(h, h_t)
    np.testing.assert_allclose(layer_scores(model, mixed, sources, targets, ["input", "4"])[:, 0],
                               d_t / (d_s + d_t), atol=1e-5)
    assert resolve_layers(model, ["input", "4"]) == ["input", "4"]


def test_the_score_is_one_at_the_source_and_zero_at_the_target(images):
    model = small_cnn(gain=100.0)
    sources, targets = images
    names = ["1", "4", "7"]
    torch.testing.assert_close(layer_scores(model, sources, sources, targets, names),
                               torch.ones(len(sources), 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer_scores(model, targets, sources, targets, names),
                               torch.zeros(len(sources), 3), atol=1e-6, rtol=0)


def test_the_walk_records_scores_at_its_iterates_and_blind_spots(images):
    """Without noise iterate 0 is the source (score 1); the blind spots' scores are those of
    the returned images; recorded iterates are the walk's own (the same with get_images)."""
    model = small_cnn(gain=100.0)
    sources, targets = images
    labels = lst.predict(model, sources)[0]
    names = ("1", "4", "7")
    res = lst.level_set_traversal(model, sources, labels, targets, iters=20, step_size=0.2,
                                  pthresh=0.2, init_noise=0.0, log_step=5, layers=names,
                                  get_images=True)
    assert res.layer_scores.shape == (8, 3) and res.layer_scores_over_path.shape == (8, 4, 3)
    torch.testing.assert_close(res.layer_scores_over_path[:, 0], torch.ones(8, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.layer_scores,
                               layer_scores(model, res.final_images, sources, targets, names))
    iterate = res.images_over_path[:, 2].float() / 255  # 8-bit: close, not equal
    torch.testing.assert_close(res.layer_scores_over_path[:, 2],
                               layer_scores(model, iterate, sources, targets, names), atol=0.02,
                               rtol=0)
    assert (res.layer_scores < 0.99).any()  # the walk moved away from the source somewhere
    plain = lst.level_set_traversal(model, sources, labels, targets, iters=20, step_size=0.2,
                                    pthresh=0.2, init_noise=0.0, log_step=5)
    assert torch.equal(plain.final_images, res.final_images)  # recording changes nothing


def test_a_stopped_walk_keeps_its_last_scores(images):
    """Under the adaptive schedule a walk that stops early holds its blind spot's scores in
    every later recording."""
    model = small_cnn(gain=100.0)
    sources, targets = images
    labels = lst.predict(model, sources)[0]
    res = lst.level_set_traversal(model, sources, labels, targets, iters=60, step_size=0.2,
                                  pthresh=0.2, log_step=5, layers=("1", "4", "7"),
                                  schedule="adaptive", stop_distance=0.3)
    stopped = (res.passes < 50).nonzero().flatten()
    assert len(stopped) > 0  # the test means something only if some walks stopped early
    for k in stopped.tolist():
        last = (int(res.passes[k]) - 1 + 4) // 5  # the first recording after its stop
        torch.testing.assert_close(res.layer_scores_over_path[k, last:],
                                   res.layer_scores[k].expand_as(res.layer_scores_over_path[k, last:]),
                                   atol=1e-5, rtol=0)


def test_default_layers_per_architecture():
    assert default_layers(ResNet20())[-1] == "features.13"
    assert default_layers(SmallCNN())[:2] == ["input", "features.3"]
    assert default_layers(vit()) == ["input", "model.patch_embed"] + [
        f"model.blocks.{i}" for i in range(4)] + ["model.fc_norm"]
    assert default_layers(torchvision.models.resnet18()) == ["input", "layer1", "layer2",
                                                             "layer3", "layer4", "avgpool"]
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    assert default_layers(deit)[2:4] == ["blocks.0", "blocks.1"]
    with pytest.raises(ValueError, match="no default layers"):
        default_layers(small_cnn())  # a plain Sequential: name them


def test_names_that_are_not_modules_are_refused():
    with pytest.raises(ValueError, match="'features.99' is not a module"):
        resolve_layers(ResNet20(), ["features.2", "features.99"])
