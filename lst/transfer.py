"""Do blind spots transfer? Other models of the same dataset judge one model's blind spots.

For each pair, every judge model classifies the blind spot (the float image LST returned, before
any 8-bit rounding) and, as the baseline, the raw target image. Judge 0 is always the traversed
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


def judge_pairs(judges: Mapping[str, nn.Module], blind_spots: torch.Tensor, targets: torch.Tensor,
                source_labels: torch.Tensor, target_labels: torch.Tensor) -> dict[str, np.ndarray]:
    """`judge` on the blind spots (keys transfer_{field}) and on the raw targets (keys
    transfer_baseline_{field}), all (N,J)."""
    spots = judge(judges, blind_spots, source_labels, target_labels)
    raw = judge(judges, targets, source_labels, target_labels)
    return {**{f"transfer_{k}": v for k, v in spots.items()},
            **{f"transfer_baseline_{k}": v for k, v in raw.items()}}


def transfer_keys() -> list[str]:
    """The results keys `judge_pairs` fills, in a fixed order."""
    return [f"transfer_{k}" for k in FIELDS] + [f"transfer_baseline_{k}" for k in FIELDS]
