"""The model's device and its class confidences, evaluated in chunks that bound memory.

Every model in this project maps a batch of [0,1] images (N,C,H,W) to logits (N,K); any input
normalisation lives inside the model. The device of a computation is always the model's.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
from torch import nn

from .batching import chunks
from .precision import autocast, model_input


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block, every module's own mode restored afterwards: a
    model handed over in train mode (BatchNorm, dropout) is measured as it predicts, and its
    running statistics are never updated by the measurement (docs/design.md, "Models")."""
    modes = [(module, module.training) for module in model.modules()]
    if any(training for _, training in modes):
        try:
            model.eval()
        except NotImplementedError:  # a torch.export module: its mode was fixed at export
            modes = []
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def in_eval_mode(function: Callable) -> Callable:
    """Decorator: `function(model, ...)` runs with the model in eval mode (`evaluating`)."""
    @functools.wraps(function)
    def wrapper(model: nn.Module, *args, **kwargs):
        with evaluating(model):
            return function(model, *args, **kwargs)
    return wrapper


def class_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[n, labels[n]]: (N,K) logits, (N,) int labels -> (N,) in [0,1]."""
    return torch.softmax(logits.float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


@in_eval_mode
@torch.inference_mode()
def confidences_of(model: nn.Module, make_images: Callable[[slice], torch.Tensor],
                   labels: torch.Tensor, total: int, chunk_size: int = 256,
                   precision: str = "fp32") -> torch.Tensor:
    """Confidence of `labels` at `total` images that are built chunk by chunk.

    make_images(slice) returns the images of that slice, (n,C,H,W) in [0,1] on the model's device;
    labels is (total,) int on the same device. At most `chunk_size` images exist at once, which
    bounds memory however many points are evaluated. precision: the model's arithmetic
    (lst.precision). Returns (total,) float32 on the device.
    """
    out = torch.empty(total, device=labels.device, dtype=torch.float32)
    with autocast(precision, labels.device):
        for part in chunks(total, chunk_size):
            logits = model(model_input(model, make_images(part), precision))
            out[part] = class_confidence(logits, labels[part])
    return out


@in_eval_mode
@torch.inference_mode()
def probabilities(model: nn.Module, images: torch.Tensor, chunk_size: int = 256,
                  precision: str = "fp32") -> torch.Tensor:
    """softmax(model(images)): (N,C,H,W) in [0,1] -> (N,K) float32 on the model's device."""
    device = model_device(model)
    with autocast(precision, device):
        return torch.cat([
            torch.softmax(model(model_input(model, images[part].to(device), precision)).float(),
                          dim=1)
            for part in chunks(len(images), chunk_size)])


def predict(model: nn.Module, images: torch.Tensor, chunk_size: int = 256
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its confidence: (N,C,H,W) in [0,1] -> ((N,) int64, (N,) float32)."""
    conf, label = probabilities(model, images, chunk_size).max(dim=1)
    return label, conf


@torch.inference_mode()
def class_confidence_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        chunk_size: int = 256, precision: str = "fp32") -> torch.Tensor:
    """p_y at each image: (N,C,H,W) in [0,1], (N,) labels -> (N,) float32 on the model's device."""
    device = model_device(model)
    images, labels = images.to(device), labels.to(device)
    return confidences_of(model, lambda part: images[part], labels, len(images), chunk_size,
                          precision)
