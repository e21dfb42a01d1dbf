"""Do blind spots transfer? Other models of the same dataset judge one model's blind spots.

For each pair, every judge model classifies the blind spot (the float image LST returned, before
any 8-bit rounding) and two baselines: the raw target image, and the image on the straight line
from source to target at the blind spot's own progress f = 1 - |x - x_t| / |x_s - x_t|,
x_s + f (x_t - x_s) (a blind spot that stopped short still holds part of the source, and so
does this image: only where blind spots keep the source class more often than it is that a
finding about the level set). Judge 0 is always the traversed
model itself (the reference: it keeps the source class on its own blind spots by construction);
then the models of --transfer_models. Judges run in float32 on their own device.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from .confidence import probabilities

FIELDS = ("source_conf", "target_conf", "pred")


@torch.inference_mode()
def judge(judges: Mapping[str, nn.Module], images: torch.Tensor, source_labels: torch.Tensor,
          target_labels: torch.Tensor, chunk_size: int = 256) -> dict[str, np.ndarray]:
    """Each judge's view of the images: (N,C,H,W) in [0,1], (N,) source and target classes.

    Returns (N,J) arrays, J = len(judges) in their order: source_conf and target_conf (float32,
    the judge's softmax probability of the source and of the target class) and pred (int64, its
    predicted class).
    """
    out = {name: [] for name in FIELDS}
    for model in judges.values():
        probs = probabilities(model, images, chunk_size).cpu()
        out["source_conf"].append(probs.gather(1, source_labels.view(-1, 1).cpu()).squeeze(1))
        out["target_conf"].append(probs.gather(1, target_labels.view(-1, 1).cpu()).squeeze(1))
        out["pred"].append(probs.argmax(dim=1))
    return {name: torch.stack(columns, dim=1).numpy() for name, columns in out.items()}


def straight_line_images(sources: torch.Tensor, targets: torch.Tensor, progress: torch.Tensor
                         ) -> torch.Tensor:
    """x_s + f (x_t - x_s): sources, targets (N,C,H,W) in [0,1]; progress f (N,), clamped to
    [0,1] (NaN, a skipped source, as 0). Returns (N,C,H,W) float32 on the sources' device."""
    f = torch.nan_to_num(progress.float(), nan=0.0).clamp(0, 1).to(sources.device)
    sources, targets = sources.float(), targets.float().to(sources.device)
    return (sources + f.view(-1, 1, 1, 1) * (targets - sources)).clamp(0, 1)


def judge_pairs(judges: Mapping[str, nn.Module], blind_spots: torch.Tensor, targets: torch.Tensor,
                source_labels: torch.Tensor, target_labels: torch.Tensor, *,
                sources: torch.Tensor | None = None,
                progress: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """`judge` on the blind spots (keys transfer_{field}), on the raw targets (keys
    transfer_baseline_{field}) and, given the sources (N,C,H,W) and each blind spot's progress
    (N,), on the `straight_line_images` at that progress (keys transfer_line_{field}); all
    (N,J)."""
    out = {f"transfer_{k}": v for k, v in
           judge(judges, blind_spots, source_labels, target_labels).items()}
    out.update({f"transfer_baseline_{k}": v for k, v in
                judge(judges, targets, source_labels, target_labels).items()})
    if sources is not None:
        line = straight_line_images(sources, targets, progress)
        out.update({f"transfer_line_{k}": v for k, v in
                    judge(judges, line, source_labels, target_labels).items()})
    return out
