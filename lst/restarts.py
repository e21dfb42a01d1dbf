"""Many blind spots per pair (docs/design.md, "Restarts and diversity"): K walks from one
(source, target), each from its own initial noise, and how far apart their blind spots end up.

`restart_geometry` measures one batch of pairs right after their walks: the mean pairwise
distance of a pair's K blind spots relative to its source-target distance, and the source-class
confidence along the chords between them. `restart_stats` turns those arrays (as the results
hold them) into Table 4's per-pair statistics.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .hull import SEGMENT_DELTAS, segment_confidences

# the per-walk results kept for every restart, (P,K) each: the spread of Table 1 across restarts
RESTART_FIELDS = ("final_confs", "passes", "distance_left", "l2", "linf", "ssim", "lpips",
                  "stepped_back")


def restart_pairs(restarts: int) -> list[tuple[int, int]]:
    """The chords between a pair's restarts: (a, b) for a < b, K(K-1)/2 of them."""
    return list(combinations(range(restarts), 2))


def restart_geometry(model: nn.Module, sources: torch.Tensor, labels: torch.Tensor,
                     targets: torch.Tensor, blind_spots: torch.Tensor, chunk_size: int = 512,
                     precision: str = "fp32") -> dict[str, np.ndarray]:
    """The K blind spots of each of P pairs, against each other.

    sources, targets: (P,C,H,W) in [0,1]; labels: (P,) source classes; blind_spots:
    (P,K,C,H,W) in [0,1], K >= 2, any device (the model's is used). Returns
    restart_spread (P,) float64: mean over the K(K-1)/2 pairs of blind spots of |a - b|, divided
    by |x_s - x_t| (NaN where source and target coincide); restart_chord_confs (P,M,21) float32:
    source-class confidence along each chord a -> b of `restart_pairs(K)`, in the model
    arithmetic `precision`.
    """
    p, k = blind_spots.shape[:2]
    pairs = restart_pairs(k)
    flat = blind_spots.flatten(2).double().cpu()
    span = (targets.double().cpu() - sources.double().cpu()).flatten(1).norm(dim=1)
    distances = torch.stack([(flat[:, a] - flat[:, b]).norm(dim=1) for a, b in pairs], dim=1)
    spread = distances.mean(dim=1) / span.where(span > 0, torch.tensor(float("nan")))
    first = blind_spots[:, [a for a, _ in pairs]].flatten(0, 1)
    second = blind_spots[:, [b for _, b in pairs]].flatten(0, 1)
    chord_labels = labels.cpu().repeat_interleave(len(pairs))
    confs = segment_confidences(model, first, second, chord_labels, chunk_size=chunk_size,
                                precision=precision)
    return {"restart_spread": spread.numpy(),
            "restart_chord_confs": confs.view(p, len(pairs), -1).numpy()}


def restart_stats(results: dict, use: np.ndarray,
                  deltas: Sequence[float] = SEGMENT_DELTAS) -> dict[str, np.ndarray]:
    """Table 4 per kept pair: results (a full_eval's (N,R,...) or an examples run's (K,K,...)
    arrays with restart_* keys), use: the boolean mask of the pairs to take over the pair axes.
    Returns 1-D float64 arrays over those pairs: spread (`restart_spread`), chords_kept_{d}
    (fraction of the pair's chords whose minimum stays above p0 - d, p0 the source's clean
    confidence), distance_left (mean over restarts) and, for final_confs, l2, ssim and
    distance_left, {field}_std: the standard deviation across the K restarts."""
    p0 = np.asarray(results["init_confs"], dtype=np.float64)
    if p0.shape != use.shape:  # an examples run: one p0 per source
        p0 = np.broadcast_to(p0[:, None], use.shape)
    chords = np.asarray(results["restart_chord_confs"], dtype=np.float64)[use]  # (P,M,21)
    stats = {"spread": np.asarray(results["restart_spread"], dtype=np.float64)[use]}
    for d in deltas:
        stats[f"chords_kept_{d:g}"] = (chords.min(axis=2) > p0[use][:, None] - d).mean(axis=1)
    def per_restart(name: str) -> np.ndarray:  # (P,K)
        return np.asarray(results[f"restart_{name}"], dtype=np.float64)[use]

    stats["distance_left"] = per_restart("distance_left").mean(axis=1)
    for name in ("final_confs", "l2", "ssim", "distance_left"):
        stats[f"{name}_std"] = per_restart(name).std(axis=1)
    return stats
