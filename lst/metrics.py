"""Distances between blind spots and their targets (the paper's Table 1).

SSIM and LPIPS come from torchmetrics. LPIPS (AlexNet) needs torchvision's ImageNet AlexNet
weights (ALEXNET_FILE): they are looked for in $LST_ALEXNET_WEIGHTS (a file) and in torch's hub
cache ($TORCH_HOME/hub/checkpoints), and never downloaded: where they are not found, the LPIPS
column is NaN and one warning says where to put them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import AlexNet_Weights

from .batching import chunks, image_chunk

log = logging.getLogger(__name__)

ALEXNET_FILE = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]  # alexnet-owt-7be5be79.pth
ALEXNET_ENV = "LST_ALEXNET_WEIGHTS"
# pixel values a chunk of `image_distances` holds: torchmetrics' SSIM map takes about 60 times
# its input's memory (a batch of 100 224x224 images: 3.7 GB), so large images go a few at a time
CHUNK_ELEMENTS = 1 << 21
_LPIPS_CACHE: dict[tuple[str, bool], nn.Module | None] = {}


def alexnet_weights_path() -> Path | None:
    """The AlexNet weights file LPIPS will use: $LST_ALEXNET_WEIGHTS if set, else the file in
    torch's hub cache; None when it does not exist. Nothing is downloaded."""
    override = os.environ.get(ALEXNET_ENV)
    path = Path(override).expanduser() if override else \
        Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return path if path.is_file() else None


def lpips_network(device: torch.device | str = "cpu", pretrained_backbone: bool = True
                  ) -> nn.Module | None:
    """torchmetrics' LPIPS (AlexNet) network in eval mode on `device`, or None with one warning
    when the AlexNet weights are not found locally (`alexnet_weights_path`).

    The backbone is loaded from that file into torchmetrics' network (the same tensors its
    pretrained path would load), so no download is ever tried. pretrained_backbone=False keeps
    a randomly initialised AlexNet (for tests).
    """
    from torchmetrics.functional.image.lpips import _LPIPS  # imported when needed: it is slow

    key = (str(device), pretrained_backbone)
    if key not in _LPIPS_CACHE:
        weights = alexnet_weights_path() if pretrained_backbone else None
        net = None
        if pretrained_backbone and weights is None:
            where = os.environ.get(ALEXNET_ENV) or Path(torch.hub.get_dir()) / "checkpoints"
            log.warning("LPIPS is NaN: torchvision's AlexNet weights (%s) are not in %s; put "
                        "them there, or set %s to the file, to get LPIPS", ALEXNET_FILE, where,
                        ALEXNET_ENV)
        else:
            net = _LPIPS(net="alex", pnet_rand=True)  # random backbone: nothing downloaded
            if weights is not None:
                net = _load_backbone(net, weights)
        if net is not None:
            net = net.eval().to(device)
            for p in net.parameters():
                p.requires_grad_(False)
        _LPIPS_CACHE[key] = net
    return _LPIPS_CACHE[key]


def _load_backbone(net: nn.Module, weights: Path) -> nn.Module | None:
    """torchvision AlexNet weights (features.K.*) into the LPIPS backbone (sliceN.K.*)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        backbone = {name: state["features." + name.split(".", 1)[1]]
                    for name in net.net.state_dict()}
        net.net.load_state_dict(backbone)
    except Exception as err:  # unreadable, or not AlexNet weights
        log.warning("LPIPS is NaN: %s holds no AlexNet weights (%s: %s)", weights,
                    type(err).__name__, str(err).splitlines()[0][:120] if str(err) else "")
        return None
    return net


def ssim(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SSIM per pair: (N,C,H,W) in [0,1] each -> (N,), H and W at least 11.

    torchmetrics computes the SSIM map (Gaussian window 11, sigma 1.5, data range 1); its mean is
    taken over the pixels whose window lies inside the image (a 5-pixel border is dropped), the
    convention of Wang et al. and of scikit-image, so padding does not bias small images.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, ssim_map = structural_similarity_index_measure(
        images, targets, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
        reduction="none", return_full_image=True)
    border = 5
    return ssim_map[..., border:-border, border:-border].flatten(1).mean(dim=1)


@torch.inference_mode()
def image_distances(images: torch.Tensor, targets: torch.Tensor, *, chunk_size: int = 256,
                    lpips: bool = True, lpips_net: nn.Module | None = None
                    ) -> dict[str, np.ndarray]:
    """Per-pair distances between images and targets, both (N,C,H,W) in [0,1] on one device.

    Returns a dict of (N,) float64 arrays:
      l2: ||x - x_t||_2 / sqrt(C*H*W); linf: max |x - x_t|;
      ssim: SSIM with an 11x11 Gaussian window, sigma 1.5, data range 1 (see `ssim`);
      lpips: LPIPS with AlexNet (torchmetrics' network; grayscale images as three equal
        channels); NaN when `lpips` is False or its weights cannot be had. `lpips_net` overrides
        the network (e.g. a random-backbone one in tests).
    Evaluated `chunk_size` pairs at a time (fewer for large images: at most CHUNK_ELEMENTS pixel
    values a chunk, 13 images of 224x224) under inference mode.
    """
    if images.shape != targets.shape:
        raise ValueError(f"images {tuple(images.shape)} and targets {tuple(targets.shape)} differ")
    n = len(images)
    chunk_size = image_chunk(chunk_size, images.shape[1:].numel(), CHUNK_ELEMENTS)
    net = lpips_net if lpips_net is not None else (lpips_network(images.device) if lpips else None)
    out = {k: np.full(n, np.nan) for k in ("l2", "linf", "ssim", "lpips")}
    for part in chunks(n, chunk_size):
        x, t = images[part].float(), targets[part].float()
        diff = (x - t).flatten(1)
        out["l2"][part] = (diff.norm(dim=1) / diff.shape[1] ** 0.5).cpu().numpy()
        out["linf"][part] = diff.abs().amax(dim=1).cpu().numpy()
        out["ssim"][part] = ssim(x, t).cpu().numpy()
        if net is not None:
            rgb = (-1, 3, -1, -1)  # the network takes RGB: gray repeated is the same picture
            distance = net(x.expand(rgb), t.expand(rgb), normalize=True)
            out["lpips"][part] = distance.flatten().cpu().numpy()
    return out
