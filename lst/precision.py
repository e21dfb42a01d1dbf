"""The arithmetic of the model's forward and backward passes: fp32, bf16 or fp16.

fp32 is the paper's arithmetic. Under bf16 or fp16 the model runs under `torch.autocast` on its
device type, and convolutional models get channels-last inputs (measured on a 2-core CPU with
AMX for resnet20, batch 100, forward+backward to the input: fp32 180 ms, bf16 101 ms, bf16 with
channels-last inputs 70 ms). Everything around the model (projection, acceptance, recorded
confidences and distances) stays float32: callers cast the logits with `.float()`.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# How much a walk's drop in confidence p0 - p, both in bf16 or fp16, falls short of the float32
# drop: the 99th percentile over every accepted iterate of adaptive walks, measured by
# benchmarks/bench_rounding.py (benchmarks/README.md, "Reduced precision"). A margin this large
# (`LSTSettings.acceptance_margin`) makes the float32 check's step backs rarer, for more passes.
CONFIDENCE_ROUNDING = {"fp32": 0.0, "bf16": 0.012, "fp16": 0.002}
_checked: set[str] = set()  # precisions whose CPU support was looked up in this process


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """torch.autocast to the precision's dtype on `device`'s type; nothing for fp32."""
    check_precision(precision)
    if PRECISIONS[precision] is None:
        yield
        return
    if device.type == "cpu":
        warn_if_emulated(precision)
    with torch.autocast(device.type, dtype=PRECISIONS[precision]):
        yield


def is_convolutional(model: nn.Module) -> bool:
    """Whether the model has a 2-d convolution (cached on the model)."""
    cached = getattr(model, "_lst_convolutional", None)
    if cached is None:
        cached = any(isinstance(m, nn.Conv2d) for m in model.modules())
        try:
            model._lst_convolutional = cached
        except AttributeError:  # a scripted or frozen module
            pass
    return cached


def model_input(model: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    """The images as the model should get them: channels-last under bf16/fp16 for a
    convolutional model (faster kernels, same values), unchanged otherwise."""
    if precision != "fp32" and images.dim() == 4 and is_convolutional(model):
        return images.contiguous(memory_format=torch.channels_last)
    return images


def cpu_has_fast(precision: str) -> bool:
    """Whether this CPU has instructions for the precision's matmuls: AVX512-BF16 or AMX for
    bf16, AMX-FP16 for fp16 (fp32 always). Without them PyTorch emulates the narrow type; on
    an AMD EPYC with AVX2 only, a ViT training step under bf16 autocast took 17.5 s against
    1.45 s in fp32 (1 thread, 128 images)."""
    check_precision(precision)
    cpu = torch.cpu
    if precision == "bf16":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    elif precision == "fp16":
        checks = ("_is_amx_fp16_supported",)
    else:
        return True
    found = [getattr(cpu, name) for name in checks if hasattr(cpu, name)]
    return not found or any(check() for check in found)  # unknown to this PyTorch: assume fast


AS_ASKED = "as asked"  # resolve_precision's reason for a precision named explicitly


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """The precision a run uses on `device`, and why, for "auto": bf16 on a CUDA GPU that
    supports it (`torch.cuda.is_bf16_supported`) or a CPU with instructions for it
    (`cpu_has_fast`), float32 elsewhere (an emulated bf16 is several times slower than float32).
    Any other precision is itself (reason AS_ASKED)."""
    if precision != "auto":
        check_precision(precision)
        return precision, AS_ASKED
    device = torch.device(device)
    if device.type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        where = "this GPU"
    elif device.type == "cpu":
        fast, where = cpu_has_fast("bf16"), f"this CPU ({torch.backends.cpu.get_cpu_capability()})"
    else:
        fast, where = False, f"device type {device.type}"
    return ("bf16", f"auto: {where} has bf16 instructions") if fast else (
        "fp32", f"auto: {where} has no bf16 instructions")


def warn_if_emulated(precision: str) -> None:
    """One warning per precision and process when the CPU has no instructions for it (looked up
    once per precision, not on every model call)."""
    if precision in _checked:
        return
    _checked.add(precision)
    if not cpu_has_fast(precision):
        log.warning("%s on this CPU (%s) has no hardware support and runs several times "
                    "slower than fp32; use fp32 here", precision,
                    torch.backends.cpu.get_cpu_capability())
