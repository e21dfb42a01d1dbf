"""Confidence over triangular convex hulls (the paper's Table 2) and along straight lines (its
star-like "limbs"); the statistics are defined in docs/design.md, "Measurements"."""
from __future__ import annotations

from itertools import combinations

import numpy as np
import torch
from torch import nn

from .confidence import confidences_of, model_device

HULL_DELTAS = (0.0, 0.1, 0.2, 0.3)


def triangle_grid(n: int = 10) -> torch.Tensor:
    """Barycentric weights (P,3) = (1-a-b, a, b) with a = i/n, b = j/n for integers i + j <= n.

    Built from integers, so no point is lost to float rounding: P = (n+1)(n+2)/2 (66 for n=10).
    Rows are ordered by i, then j; row 0 is the source vertex (a = b = 0).
    """
    ij = torch.tensor([(i, j) for i in range(n + 1) for j in range(n + 1 - i)], dtype=torch.float64)
    a, b = ij[:, 0] / n, ij[:, 1] / n
    return torch.stack([(n - ij[:, 0] - ij[:, 1]) / n, a, b], dim=1)


@torch.inference_mode()
def hull_confidences(model: nn.Module, sources: torch.Tensor, first: torch.Tensor,
                     second: torch.Tensor, labels: torch.Tensor, n: int = 10,
                     chunk_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """p_y over the triangle (source, first, second) at the points of `triangle_grid(n)`.

    sources, first, second: (M,C,H,W) in [0,1], one triangle per row; labels: (M,) source classes.
    Points are built chunk by chunk (at most `chunk_size` images per forward) on the model's
    device, in the model arithmetic `precision` (lst.precision). Returns (M,P) float32 on the
    CPU, columns in `triangle_grid` order.
    """
    device = model_device(model)
    weights = triangle_grid(n).float().to(device)
    vertices = torch.stack([sources, first, second], dim=1).to(device)  # (M,3,C,H,W)
    m, p = len(sources), len(weights)
    point_labels = labels.to(device).repeat_interleave(p)

    def make_images(part: slice) -> torch.Tensor:
        idx = torch.arange(part.start, part.stop, device=device)
        w = weights[idx % p].view(-1, 3, 1, 1, 1)
        return (w * vertices[idx // p]).sum(dim=1).clamp_(0, 1)

    return confidences_of(model, make_images, point_labels, m * p, chunk_size,
                          precision).view(m, p).cpu()


def source_hull_confidences(model: nn.Module, source: torch.Tensor, label: int,
                            blind_spots: torch.Tensor, pairs: list[tuple[int, int]], n: int = 10,
                            chunk_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """p_label over the triangles (source, blind_spots[a], blind_spots[b]) for each (a, b) in pairs.

    source: (C,H,W) in [0,1]; blind_spots: (R,C,H,W) in [0,1], this source's blind spots.
    Returns (len(pairs),P) float32 on the CPU, as `hull_confidences`.
    """
    first = blind_spots[[a for a, _ in pairs]]
    second = blind_spots[[b for _, b in pairs]]
    labels = torch.full((len(pairs),), int(label), dtype=torch.int64)
    return hull_confidences(model, source.expand_as(first), first, second, labels, n, chunk_size,
                            precision)


def hull_stats(confs: torch.Tensor | np.ndarray, n: int = 10) -> dict[str, np.ndarray]:
    """Table 2 statistics per triangle from its (M,P) grid confidences (`triangle_grid(n)` order).

    Returns a dict of (M,) float64 arrays: p_src (confidence at the source vertex), mean (over all
    P points), frac_above_{d} for d in HULL_DELTAS (fraction of points with p > p_src - d),
    edge_mean (mean of the means over the two edges touching the source, b = 0 and a = 0,
    n+1 points each) and edge_min (minimum over those edges of p - p_src).
    """
    confs = np.asarray(confs, dtype=np.float64)
    grid = triangle_grid(n).numpy()
    a, b = grid[:, 1], grid[:, 2]
    p_src = confs[:, 0]
    edge_a, edge_b = confs[:, b == 0], confs[:, a == 0]
    stats = {"p_src": p_src, "mean": confs.mean(axis=1)}
    for d in HULL_DELTAS:
        stats[f"frac_above_{d:g}"] = (confs > p_src[:, None] - d).mean(axis=1)
    stats["edge_mean"] = (edge_a.mean(axis=1) + edge_b.mean(axis=1)) / 2
    stats["edge_min"] = np.minimum(edge_a.min(axis=1), edge_b.min(axis=1)) - p_src
    return stats


def source_hull_stats(model: nn.Module, source: torch.Tensor, label: int,
                      blind_spots: torch.Tensor, n: int = 10, chunk_size: int = 512,
                      precision: str = "fp32") -> dict[str, float]:
    """Table 2 statistics of one source over every pair of its blind spots.

    source: (C,H,W) in [0,1]; blind_spots: (K,C,H,W), K >= 2, blind spots of this source towards
    different targets. Each statistic of `hull_stats` is averaged over the K(K-1)/2 pairs, except
    edge_min, which is the minimum over pairs. Returns plain floats.
    """
    pairs = list(combinations(range(len(blind_spots)), 2))
    if not pairs:
        raise ValueError("need at least two blind spots of the same source")
    stats = hull_stats(source_hull_confidences(model, source, label, blind_spots, pairs, n,
                                               chunk_size, precision), n)
    return {k: float(v[0]) for k, v in aggregate_pairs(stats, len(pairs)).items()}


def aggregate_pairs(stats: dict[str, np.ndarray], num_pairs: int) -> dict[str, np.ndarray]:
    """Per-source statistics from per-triangle ones laid out source by source, (N*num_pairs,).

    Every statistic is the mean over a source's pairs, except edge_min: the minimum. -> (N,) each.
    """
    return {k: (v.reshape(-1, num_pairs).min(axis=1) if k == "edge_min"
                else v.reshape(-1, num_pairs).mean(axis=1)) for k, v in stats.items()}


@torch.inference_mode()
def segment_confidences(model: nn.Module, starts: torch.Tensor, ends: torch.Tensor,
                        labels: torch.Tensor, num_points: int = 21, chunk_size: int = 512,
                        precision: str = "fp32") -> torch.Tensor:
    """p_y along the straight segments (1-t) start + t end, t = 0, 1/(num_points-1), ..., 1.

    starts, ends: (N,C,H,W) in [0,1]; labels: (N,). The star-like "limbs" when ends are blind spots,
    the straight source-to-target line when ends are the targets. Returns (N,num_points) float32
    on the CPU.
    """
    device = model_device(model)
    t = torch.linspace(0, 1, num_points, device=device)
    starts, ends = starts.to(device), ends.to(device)
    total = len(starts) * num_points
    point_labels = labels.to(device).repeat_interleave(num_points)

    def make_images(part: slice) -> torch.Tensor:
        idx = torch.arange(part.start, part.stop, device=device)
        k, w = idx // num_points, t[idx % num_points].view(-1, 1, 1, 1)
        return ((1 - w) * starts[k] + w * ends[k]).clamp_(0, 1)

    confs = confidences_of(model, make_images, point_labels, total, chunk_size, precision)
    return confs.view(len(starts), num_points).cpu()
