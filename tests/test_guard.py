"""The level-set guarantee in reduced precision (lst.guard): a model whose bf16 confidence is
biased upwards lets the walks accept steps that float32 refuses; every blind spot and matched
iterate it returns is still in the level set in float32, and the walks say they were stepped back."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lst
from lst.guard import HISTORY
from tests.conftest import frozen, small_cnn

PTHRESH = 0.2


class OverconfidentInReducedPrecision(nn.Module):
    """A small CNN that, under autocast, adds `bias` to its top logit: in bf16 its top class
    looks more certain than float32 says, so a walk's drop in confidence looks smaller."""

    def __init__(self, bias: float = 1.0):
        super().__init__()
        self.net, self.bias = small_cnn(gain=100.0), bias

    def forward(self, x):
        logits = self.net(x)
        if torch.is_autocast_enabled(x.device.type):
            logits = logits + self.bias * F.one_hot(logits.argmax(1), logits.shape[1])
        return logits


def pairs(model, n=8):
    """n images the model calls class 4 and n it calls another class, each walking to one of
    the other group: (sources, labels, targets), (2n,3,16,16) in [0,1]."""
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(400, 3, 1, 1, generator=g) * torch.rand(400, 3, 16, 16, generator=g)
    predicted = lst.predict(model, pool)[0]
    a, b = pool[predicted == 4][:n], pool[predicted != 4][:n]
    sources, targets = torch.cat([a, b]), torch.cat([b, a])
    return sources, lst.predict(model, sources)[0], targets


def float32_drops(model, result, labels):
    """p0 - p in float32 at every kept blind spot."""
    p = lst.class_confidence_of(model, result.final_images, labels)
    return (result.init_confs - p)[result.kept]


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_a_walk_fooled_by_its_arithmetic_is_stepped_back_into_the_level_set(schedule):
    model = frozen(OverconfidentInReducedPrecision())
    x, y, t = pairs(model)
    settings = lst.LSTSettings(step_size=0.1, iters=40, pthresh=PTHRESH, precision="bf16",
                               schedule=schedule, matched_fractions=(0.25, 0.5, 0.75))
    result = lst.level_set_traversal(model, x, y, t, settings)
    drops = float32_drops(model, result, y)
    assert result.kept.all()
    assert (result.stepped_back > 0).any()  # the walks did leave the level set in float32
    assert (drops < PTHRESH).all(), drops.max()  # and no blind spot is outside it
    # the confidences reported are the float32 ones at the images returned
    torch.testing.assert_close(result.final_confs[result.kept],
                               result.init_confs[result.kept] - drops, rtol=0, atol=1e-6)
    stepped = result.stepped_back > 0
    assert (result.stepped_back <= HISTORY + 1).all()
    # a blind spot stepped back less than HISTORY + 1 is an earlier iterate, not the source
    earlier = stepped & (result.stepped_back <= HISTORY)
    assert ((result.final_images[earlier] - x[earlier]).flatten(1).norm(dim=1) > 0).all()
    # matched iterates: reached only inside the level set in float32
    reached = result.matched_iters >= 0
    matched = result.matched_images[reached]
    labels = y.view(-1, 1).expand_as(reached)[reached]
    p = lst.class_confidence_of(model, matched, labels)
    p0 = result.init_confs.view(-1, 1).expand_as(reached)[reached]
    assert ((p0 - p) < PTHRESH).all()
    torch.testing.assert_close(result.matched_confs[reached], p, rtol=0, atol=1e-6)


def test_in_fp32_the_same_walks_are_never_stepped_back():
    model = frozen(OverconfidentInReducedPrecision())
    x, y, t = pairs(model)
    fp32 = lst.level_set_traversal(model, x, y, t, step_size=0.1, iters=40, pthresh=PTHRESH)
    assert (fp32.stepped_back == 0).all()
    assert (float32_drops(model, fp32, y) < PTHRESH).all()


def test_a_reduced_precision_run_key_names_its_margin_an_fp32_key_does_not():
    """fp32 runs keep their keys; a bf16/fp16 key names its margin, so a run made before the
    float32 check is never resumed or reused as a checked one."""
    assert "acceptance_margin" not in lst.LSTSettings().as_dict()
    assert lst.LSTSettings(precision="bf16").as_dict()["acceptance_margin"] == 0
    assert lst.LSTSettings(acceptance_margin=0.01).as_dict()["acceptance_margin"] == 0.01
    with pytest.raises(ValueError, match="acceptance_margin"):
        lst.LSTSettings(pthresh=0.1, acceptance_margin=0.1)


def test_a_margin_makes_acceptance_stricter():
    """A walk with margin m accepts exactly the steps whose drop is below delta - m: with m
    close to delta nothing but tiny drops pass, so it ends nearer its source."""
    model = small_cnn(gain=100.0)
    x, y, t = pairs(model)
    loose = lst.level_set_traversal(model, x, y, t, step_size=0.1, iters=20, pthresh=PTHRESH)
    strict = lst.level_set_traversal(model, x, y, t, step_size=0.1, iters=20, pthresh=PTHRESH,
                                     acceptance_margin=0.19)
    assert ((strict.init_confs - strict.final_confs) < PTHRESH - 0.19).all()
    assert (strict.accept_rate <= loose.accept_rate).all()
    assert (strict.accept_rate < loose.accept_rate).any()


def test_8_bit_blind_spots_are_checked_as_8_bit_images():
    """Rounding a blind spot to 8 bits (what full_eval --get_final_imgs stores and measures) can
    take it out of the level set, in fp32 too: with quantize the check is made on the rounded
    image, which is the blind spot returned."""
    model = small_cnn(gain=100.0)
    x, y, t = pairs(model)
    walk = dict(step_size=0.1, iters=40, pthresh=0.05)

    def rounded_drops(result):
        eight_bit = (result.final_images * 255).round() / 255
        return (result.init_confs - lst.class_confidence_of(model, eight_bit, y))[result.kept]

    plain = lst.level_set_traversal(model, x, y, t, **walk)
    assert (rounded_drops(plain) >= 0.05).any()  # the hazard, on these walks
    checked = lst.level_set_traversal(model, x, y, t, **walk, quantize=True)
    assert (checked.stepped_back > 0).any() and (rounded_drops(checked) < 0.05).all()
    assert torch.equal(checked.final_images * 255, (checked.final_images * 255).round())
    p = lst.class_confidence_of(model, checked.final_images, y)
    torch.testing.assert_close(checked.final_confs, p, rtol=0, atol=1e-6)


def test_full_eval_with_final_images_stores_blind_spots_that_are_in_the_level_set(tmp_path):
    import level_set_traversal as cli
    from lst.results import load_results

    argv = ["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "6", "--rounds", "2",
            "--iters", "30", "--pthresh", "0.05", "--get_final_imgs", "--quiet",
            "--out_dir", str(tmp_path)]
    args = cli.parse_args(argv)
    assert cli.run_identity(args, cli.check_args(args))["settings"]["quantize"] is True
    assert cli.main(argv) == 0
    from models import load_model

    saved = load_results(next(tmp_path.glob("*_fulleval_dict.pkl")))["results"]
    model, _ = load_model("smallcnn-normal", "shapes")
    images = torch.from_numpy(np.array(saved["final_images"])).float().div(255).flatten(0, 1)
    labels = torch.from_numpy(saved["labels"]).repeat_interleave(2)
    kept = torch.from_numpy(saved["kept"]).flatten()
    p0 = torch.from_numpy(saved["init_confs"]).flatten()
    drops = (p0 - lst.class_confidence_of(model, images, labels))[kept]
    assert kept.any() and (drops < 0.05).all()
    # the reported confidences are those of the stored 8-bit images
    torch.testing.assert_close(torch.from_numpy(saved["final_confs"]).flatten()[kept],
                               p0[kept] - drops, rtol=0, atol=1e-5)
