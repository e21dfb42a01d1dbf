"""Distances between blind spots and their targets (the paper's Table 1).

SSIM and LPIPS come from torchmetrics. LPIPS (AlexNet) needs torchvision's ImageNet AlexNet
weights, which torchvision downloads on first use into $TORCH_HOME/hub/checkpoints; where they
cannot be had, the LPIPS column is NaN and one warning says how to provide them.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

from .batching import chunks

log = logging.getLogger(__name__)

_LPIPS_CACHE: dict[tuple[str, bool], nn.Module | None] = {}


def lpips_network(device: torch.device | str = "cpu", pretrained_backbone: bool = True
                  ) -> nn.Module | None:
    """torchmetrics' LPIPS (AlexNet) network in eval mode on `device`, or None with one warning.

    pretrained_backbone=False builds it on a randomly initialised AlexNet (no download; for tests).
    """
    from torchmetrics.functional.image.lpips import _LPIPS  # imported when needed: it is slow

    key = (str(device), pretrained_backbone)
    if key not in _LPIPS_CACHE:
        try:
            net = _LPIPS(net="alex", pnet_rand=not pretrained_backbone).eval().to(device)
            for p in net.parameters():
                p.requires_grad_(False)
        except Exception as err:  # no network and no cached AlexNet weights
            hub = os.path.join(torch.hub.get_dir(), "checkpoints")
            log.warning("LPIPS is NaN: torchvision's AlexNet weights could not be loaded (%s). "
                        "Copy alexnet-owt-7be5be79.pth into %s (or set TORCH_HOME) to get LPIPS.",
                        type(err).__name__, hub)
            net = None
        _LPIPS_CACHE[key] = net
    return _LPIPS_CACHE[key]


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
      lpips: LPIPS with AlexNet (torchmetrics' network); NaN when `lpips` is False or its weights
        cannot be had. `lpips_net` overrides the network (e.g. a random-backbone one in tests).
    Evaluated `chunk_size` pairs at a time under inference mode.
    """
    if images.shape != targets.shape:
        raise ValueError(f"images {tuple(images.shape)} and targets {tuple(targets.shape)} differ")
    n = len(images)
    net = lpips_net if lpips_net is not None else (lpips_network(images.device) if lpips else None)
    out = {k: np.full(n, np.nan) for k in ("l2", "linf", "ssim", "lpips")}
    for part in chunks(n, chunk_size):
        x, t = images[part].float(), targets[part].float()
        diff = (x - t).flatten(1)
        out["l2"][part] = (diff.norm(dim=1) / diff.shape[1] ** 0.5).cpu().numpy()
        out["linf"][part] = diff.abs().amax(dim=1).cpu().numpy()
        out["ssim"][part] = ssim(x, t).cpu().numpy()
        if net is not None:
            out["lpips"][part] = net(x, t, normalize=True).flatten().cpu().numpy()
    return out
