"""The project's own small architectures, all taking [0,1] images (normalisation inside)."""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import HybridEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalized(nn.Module):
    """model((x - mean) / std): makes a model that expects normalised inputs take [0,1] images."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """A small CNN for 32x32 images: (N,3,32,32) in [0,1] -> (N,num_classes) logits."""

    # the layers of --get_layers: the four conv blocks (after pooling) and the pooled features
    lst_layers = ("features.3", "features.7", "features.11", "features.14", "features.16")

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(3, width), nn.MaxPool2d(2),
            *_conv_bn(width, 2 * width), nn.MaxPool2d(2),
            *_conv_bn(2 * width, 4 * width), nn.MaxPool2d(2),
            *_conv_bn(4 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - 0.5) / 0.25))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 (3 stages of 3 basic blocks, widths 16/32/64), on [0,1] images
    normalised inside with the CIFAR-10 channel statistics."""

    # the layers of --get_layers: the stem, the end of each stage, the pooled features
    lst_layers = ("features.2", "features.5", "features.8", "features.11", "features.13")

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU()]
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for block in range(3):
                layers.append(_BasicBlock(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
                c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - self.mean) / self.std))


def vit(num_classes: int = 10, dim: int = 192, depth: int = 4, heads: int = 3) -> nn.Module:
    """A small vision transformer for 32x32 images: (N,3,32,32) in [0,1] -> (N,num_classes).

    timm's `VisionTransformer` with a convolutional stem as its patch embedding (timm's
    `HybridEmbed`; the stem of the paper's adversarially trained "ViT-S-ConvStem", scaled down):
    two stride-2 conv-BN-ReLU layers (3 -> 32 -> 64 channels) bring 32x32 to an 8x8 grid, a 1x1
    projection makes 64 tokens of width `dim`; `depth` pre-norm blocks with `heads` heads and MLP
    ratio 2; no class token, the tokens' mean feeds the linear head. CIFAR-10 normalisation inside.
    Attention runs as explicit matrix products: on CPU, PyTorch's fused attention kernel took
    45% of a training step at this size, and the explicit form made a bf16 step 1.7x faster
    (the function computed is the same).
    """
    stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
    model = VisionTransformer(img_size=32, patch_size=1, num_classes=num_classes, embed_dim=dim,
                              depth=depth, num_heads=heads, mlp_ratio=2.0, class_token=False,
                              global_pool="avg", embed_layer=partial(HybridEmbed, backbone=stem))
    for block in model.blocks:
        block.attn.fused_attn = False
    return Normalized(model, CIFAR10_MEAN, CIFAR10_STD)


ARCHITECTURES = {"smallcnn": SmallCNN, "resnet20": ResNet20, "vit": vit}
