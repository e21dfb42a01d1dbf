"""Mixed precision: autocast really used where the model runs, fp16 loss scaling, float32
re-evaluation of the blind spots, and fp32 exactly as before."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lst
from lst.experiments import float32_violations
from lst.walk import confidence_and_grad
from tests.conftest import frozen, small_cnn


class DtypeRecorder(nn.Module):
    """A small CNN that records the dtype its convolution computes in (bf16 under autocast)."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn(gain=50.0)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.net[0](x[:1]).dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return self.net(x)


def images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g)


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_every_model_call_runs_in_the_chosen_precision(precision, dtype):
    model = frozen(DtypeRecorder())
    x, t = images()
    y = lst.predict(model, x)[0]
    model.seen.clear()
    result = lst.level_set_traversal(model, x, y, t, iters=3, log_step=1, get_widths=True,
                                     width_distances=(1.0,), width_directions=4, precision=precision)
    walk = model.seen[:]
    model.seen.clear()
    lst.hull_confidences(model, x[:2], t[:2], t[2:4], y[:2], precision=precision)
    lst.segment_confidences(model, x[:2], t[:2], y[:2], precision=precision)
    measured = model.seen[:]
    model.seen.clear()
    lst.predict(model, x)  # choosing images stays float32
    chosen = model.seen[:]
    low = [seen for seen in walk + measured if seen[0] == dtype]
    assert low and len(low) >= len(walk + measured) - (2 if precision != "fp32" else 0)
    # fp32: exactly the old path; otherwise the convolutional model gets channels-last inputs
    assert all(channels_last == (precision != "fp32") for d, channels_last in low)
    assert all(d == torch.float32 and not cl for d, cl in chosen)
    for name in ("final_confs", "init_confs"):
        assert getattr(result, name).dtype == torch.float32


def test_fp32_is_the_default_and_unchanged(images_pair=None):
    model = small_cnn(gain=100.0)
    x, t = images()
    y = lst.predict(model, x)[0]
    default = lst.level_set_traversal(model, x, y, t, iters=5, adv_step_size=0.01)
    explicit = lst.level_set_traversal(model, x, y, t, iters=5, adv_step_size=0.01, precision="fp32")
    assert lst.LSTSettings().precision == "fp32"
    for a, b in zip(lst.LSTResult.numpy(default).values(), lst.LSTResult.numpy(explicit).values()):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def saturated_linear_model():
    torch.manual_seed(0)
    layer = nn.Linear(48, 10)
    with torch.no_grad():
        layer.weight.mul_(100)
    return frozen(nn.Sequential(nn.Flatten(), layer))


def test_fp16_loss_scaling_keeps_tiny_gradients_that_plain_fp16_flushes():
    model = saturated_linear_model()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    _, exact = confidence_and_grad(model, x, y, "fp32")

    xg = x.clone().requires_grad_(True)  # plain fp16: the same forward, no scaling
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(xg)
    plain, = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xg)

    _, scaled = confidence_and_grad(model, x, y, "fp16")
    flushed = (plain.flatten(1).abs().amax(1) == 0) & (exact.flatten(1).abs().amax(1) > 0)
    assert flushed.any(), "guard: plain fp16 must lose some gradient here"
    def unit(g):  # (cosine_similarity's eps would swamp gradients this small)
        g = g.flatten(1).double()
        return g / g.norm(dim=1, keepdim=True)

    cos = (unit(scaled) * unit(exact)).sum(dim=1)
    assert (cos > 0.99).all(), cos
    ratio = scaled.flatten(1).double().norm(dim=1) / exact.flatten(1).double().norm(dim=1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.02), ratio  # unscaled: true magnitude


def test_bf16_blind_spots_are_reevaluated_in_float32():
    model = small_cnn(gain=30.0)
    x, t = images(8)
    y = lst.predict(model, x)[0]
    result = lst.level_set_traversal(model, x, y, t, iters=6, step_size=0.2, pthresh=0.3,
                                     precision="bf16")
    in_fp32 = lst.class_confidence_of(model, result.final_images, y)
    torch.testing.assert_close(result.final_confs, in_fp32, rtol=0, atol=0)
    torch.testing.assert_close(result.init_confs, lst.class_confidence_of(model, x, y), rtol=0, atol=0)


def test_float32_violations_counts_kept_pairs_below_the_level_set():
    init = np.array([0.9, 0.9, 0.9, 0.9])
    final = np.array([0.85, 0.69, 0.70, 0.2])
    kept = np.array([True, True, True, False])
    # 0.9 - 0.69 >= 0.2 breaks it; 0.9 - 0.70 is 0.2 up to rounding; the last is not kept
    share = float32_violations(init, final, kept, pthresh=0.2)
    assert share == pytest.approx(1 / 3) or share == pytest.approx(2 / 3)
    assert float32_violations(init, final, kept, pthresh=0.5) == 0.0
    assert float32_violations(init, final, np.zeros(4, bool), pthresh=0.2) == 0.0


@pytest.mark.kernels
def test_batched_widths_equal_widths_one_sample_at_a_time():
    model = small_cnn(gain=10.0)
    x, steps = images(5)
    y = lst.predict(model, x)[0]
    kwargs = dict(num_directions=24, seed=3, stream="widths/0")
    together = lst.path_widths(model, x, steps, y, (0.5, 2.0), sample_ids=[10, 11, 12, 13, 14],
                               chunk_size=20, **kwargs)  # chunks straddle samples
    alone = torch.cat([lst.path_widths(model, x[k:k + 1], steps[k:k + 1], y[k:k + 1], (0.5, 2.0),
                                       sample_ids=[10 + k], chunk_size=48, **kwargs)
                       for k in range(5)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.kernels
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == "default",
                    reason="inductor picks its own instruction set, so ATEN_CPU_CAPABILITY=default "
                           "emulates nothing for it, and its C++ does not build under it")
def test_compile_flag_gives_the_same_blind_spots_up_to_rounding(tmp_path):
    """About a minute on 2 CPU cores (compilation): --compile changes kernels, not results."""
    import level_set_traversal as cli
    from lst.results import load_results

    base = ["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "8", "--rounds", "2",
            "--iters", "10", "--batch_size", "16"]
    assert cli.main(base + ["--out_dir", str(tmp_path / "eager")]) == 0
    assert cli.main(base + ["--compile", "--out_dir", str(tmp_path / "compiled")]) == 0
    eager, compiled = (load_results(next((tmp_path / d).glob("*_fulleval_dict.pkl")))
                       for d in ("eager", "compiled"))
    assert eager["args"]["run_key"] == compiled["args"]["run_key"]  # the same run
    np.testing.assert_allclose(eager["results"]["final_confs"], compiled["results"]["final_confs"],
                               atol=1e-4)


def test_a_compiled_model_has_the_weights_fingerprint_of_its_model():
    from lst.identity import weights_fingerprint

    model = small_cnn()
    assert weights_fingerprint(torch.compile(model)) == weights_fingerprint(model)


@pytest.mark.parametrize("fast", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(monkeypatch, caplog, fast):
    from lst import precision
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: fast, raising=False)
    monkeypatch.setattr(precision, "_checked", set())
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16)
    with caplog.at_level("WARNING", logger="lst.precision"):
        for _ in range(3):
            with precision.autocast("bf16", x.device):
                model(x)
            with precision.autocast("fp32", x.device):
                model(x)
    warnings = [r for r in caplog.records if "no hardware support" in r.getMessage()]
    assert len(warnings) == (0 if fast else 1)
    assert precision.cpu_has_fast("bf16") == fast and precision.cpu_has_fast("fp32")


def test_auto_precision_is_bf16_only_where_the_device_has_instructions(monkeypatch):
    import lst.precision as precision

    monkeypatch.setattr(precision, "cpu_has_fast", lambda name: True)
    chosen, why = precision.resolve_precision("auto", "cpu")
    assert chosen == "bf16" and "has bf16 instructions" in why
    monkeypatch.setattr(precision, "cpu_has_fast", lambda name: False)
    chosen, why = precision.resolve_precision("auto", torch.device("cpu"))
    assert chosen == "fp32" and "no bf16 instructions" in why
    assert precision.resolve_precision("auto", "meta")[0] == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == ("bf16", "as asked")
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("fp8", "cpu")
