"""Confidence over triangular convex hulls (the paper's Table 2) and along straight lines: its
star-like "limbs" (source to blind spot) and the "chords" between two blind spots that test
convexity (Table 2b); the statistics are defined in docs/design.md, "Measurements"."""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .batching import image_chunk
from .confidence import confidences_of, model_device

HULL_DELTAS = (0.0, 0.1, 0.2, 0.3)
SEGMENT_DELTAS = (0.05, 0.1, 0.2)  # Table 2b: a limb or chord is kept while p > p_src - delta
SEGMENT_POINTS = 21
# the deltas of the delta-curve figure: steps of 0.001 up to 0.1, then of 0.01
DELTA_CURVE = np.unique(np.round(np.r_[np.linspace(0, 0.1, 101), np.linspace(0.1, 1, 91)], 3))


def triangle_grid(n: int = 10) -> torch.Tensor:
    """Barycentric weights (P,3) = (1-a-b, a, b) with a = i/n, b = j/n for integers i + j <= n.

    Built from integers, so no point is lost to float rounding: P = (n+1)(n+2)/2 (66 for n=10).
    Rows are ordered by i, then j; row 0 is the source vertex (a = b = 0).
    """
    ij = torch.tensor([(i, j) for i in range(n + 1) for j in range(n + 1 - i)], dtype=torch.float64)
    a, b = ij[:, 0] / n, ij[:, 1] / n
    return torch.stack([(n - ij[:, 0] - ij[:, 1]) / n, a, b], dim=1)


def paper_grid_points(n: int = 10) -> np.ndarray:
    """Which points of `triangle_grid(n)` the paper's code keeps: (P,) bool.

    The paper's code (eval_utils.py, `get_avg_conf`) builds its grid from the floats k/n and
    skips a point where 1 - a - b < 0 in float64, which drops points of the chord a + b = 1
    whose sum rounds above 1: for n = 10, (a, b) = (0.8, 0.2) and (0.9, 0.1), leaving 64 of 66.
    The test is replayed here on the same floats, so the mask is derived, not listed.
    """
    grid = triangle_grid(n).numpy()
    i, j = np.rint(grid[:, 1] * n).astype(int), np.rint(grid[:, 2] * n).astype(int)
    steps = np.arange(n + 1) / n  # the paper's np.arange(n+1)/n
    return np.array([not (1 - steps[a] - steps[b] < 0) for a, b in zip(i, j)])


def triangle_edges(n: int = 10) -> dict[str, np.ndarray]:
    """Row indices of `triangle_grid(n)` along the triangle (source, first, second)'s edges,
    each (n+1,) ordered from its first vertex: "first" (source -> first, b = 0), "second"
    (source -> second, a = 0) and "chord" (first -> second, a + b = 1)."""
    grid = triangle_grid(n).numpy()
    i, j = np.rint(grid[:, 1] * n).astype(int), np.rint(grid[:, 2] * n).astype(int)
    row = {(a, b): r for r, (a, b) in enumerate(zip(i, j))}
    return {"first": np.array([row[(k, 0)] for k in range(n + 1)]),
            "second": np.array([row[(0, k)] for k in range(n + 1)]),
            "chord": np.array([row[(n - k, k)] for k in range(n + 1)])}


def blend(weights: torch.Tensor, vertices: torch.Tensor, part: slice) -> torch.Tensor:
    """Points `part` of the flat list (shape m, point k) -> sum_v weights[k, v] vertices[m, v].

    weights: (P,V) float; vertices: (M,V,C,H,W) on one device. Returns (len(part),C,H,W), built
    one shape at a time as a (P',V) x (V,CHW) matrix product (no gathered copies of the
    vertices)."""
    p = len(weights)
    out = torch.empty(part.stop - part.start, *vertices.shape[2:], device=vertices.device)
    flat = out.view(len(out), -1)
    start = part.start
    while start < part.stop:
        m, first = divmod(start, p)
        stop = min(part.stop, (m + 1) * p)
        torch.mm(weights[first:first + stop - start], vertices[m].reshape(len(vertices[m]), -1),
                 out=flat[start - part.start:stop - part.start])
        start = stop
    return out


@torch.inference_mode()
def hull_confidences(model: nn.Module, sources: torch.Tensor, first: torch.Tensor,
                     second: torch.Tensor, labels: torch.Tensor, n: int = 10,
                     chunk_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """p_y over the triangle (source, first, second) at the points of `triangle_grid(n)`.

    sources, first, second: (M,C,H,W) in [0,1], one triangle per row; labels: (M,) source classes.
    Points are built chunk by chunk (at most `chunk_size` images per forward, fewer for large
    images: `lst.batching.image_chunk`) on the model's
    device, in the model arithmetic `precision` (lst.precision). Returns (M,P) float32 on the
    CPU, columns in `triangle_grid` order.
    """
    device = model_device(model)
    weights = triangle_grid(n).float().to(device)
    vertices = torch.stack([sources, first, second], dim=1).to(device)  # (M,3,C,H,W)
    chunk_size = image_chunk(chunk_size, sources.shape[1:].numel())
    m, p = len(sources), len(weights)
    point_labels = labels.to(device).repeat_interleave(p)

    def make_images(part: slice) -> torch.Tensor:
        return blend(weights, vertices, part).clamp_(0, 1)

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


def hull_stats(confs: torch.Tensor | np.ndarray, n: int = 10,
               points: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Table 2 statistics per triangle from its (M,P) grid confidences (`triangle_grid(n)` order).

    Returns a dict of (M,) float64 arrays: p_src (confidence at the source vertex), mean (over all
    P points), frac_above_{d} for d in HULL_DELTAS (fraction of points with p > p_src - d),
    edge_mean (mean of the means over the two edges touching the source, b = 0 and a = 0,
    n+1 points each) and edge_min (minimum over those edges of p - p_src). points: (P,) bool,
    the points the mean and the fractions are taken over (all by default; `paper_grid_points`
    for the paper's 64); the source vertex and the two edges must be among them.
    """
    confs = np.asarray(confs, dtype=np.float64)
    edges = triangle_edges(n)
    p_src = confs[:, 0]
    edge_a, edge_b = confs[:, edges["first"]], confs[:, edges["second"]]
    if points is not None:
        points = np.asarray(points, dtype=bool)
        if not (points[0] and points[edges["first"]].all() and points[edges["second"]].all()):
            raise ValueError("the points of a Table 2 view must keep the source and its edges")
        confs = confs[:, points]
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


def table2_stats(hull_confs: torch.Tensor | np.ndarray,
                 points: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Table 2's per-source statistics from the triangle confidences of a full_eval, (N,M,P): M
    triangles a source (pairs of its blind spots), P grid points. `hull_stats` of each triangle
    (over `points`, all by default), then `aggregate_pairs`. -> (N,) each."""
    confs = np.asarray(hull_confs)
    return aggregate_pairs(hull_stats(confs.reshape(-1, confs.shape[-1]), points=points),
                           confs.shape[1])


def aggregate_pairs(stats: dict[str, np.ndarray], num_pairs: int) -> dict[str, np.ndarray]:
    """Per-source statistics from per-triangle ones laid out source by source, (N*num_pairs,).

    Every statistic is the mean over a source's pairs, except edge_min: the minimum. -> (N,) each.
    """
    return {k: (v.reshape(-1, num_pairs).min(axis=1) if k == "edge_min"
                else v.reshape(-1, num_pairs).mean(axis=1)) for k, v in stats.items()}


def segment_grid(n: int = SEGMENT_POINTS - 1) -> torch.Tensor:
    """Weights (n+1,2) = ((n-k)/n, k/n), k = 0..n, float64 built from integers: point k of the
    segment from `start` to `end` is w0 * start + w1 * end. For n = 20 the even points are
    exactly the points of a `triangle_grid(10)` edge."""
    k = torch.arange(n + 1, dtype=torch.float64)
    return torch.stack([(n - k) / n, k / n], dim=1)


@torch.inference_mode()
def segment_confidences(model: nn.Module, starts: torch.Tensor, ends: torch.Tensor,
                        labels: torch.Tensor, num_points: int = SEGMENT_POINTS,
                        chunk_size: int = 512, precision: str = "fp32",
                        at: Sequence[int] | None = None) -> torch.Tensor:
    """p_y along the straight segments from start to end, at the points of
    `segment_grid(num_points - 1)` (t = k/(num_points-1)), or only at the point indices `at`.

    starts, ends: (N,C,H,W) in [0,1]; labels: (N,). The star-like "limbs" when ends are blind spots,
    the straight source-to-target line when ends are the targets, the "chords" when both are
    blind spots. Returns (N,num_points) (or (N,len(at))) float32 on the CPU.
    """
    device = model_device(model)
    weights = segment_grid(num_points - 1)
    weights = (weights if at is None else weights[list(at)]).float().to(device)
    p = len(weights)
    starts, ends = starts.to(device), ends.to(device)
    total = len(starts) * p
    chunk_size = image_chunk(chunk_size, starts.shape[1:].numel())
    point_labels = labels.to(device).repeat_interleave(p)

    endpoints = torch.stack([starts, ends], dim=1)  # (N,2,C,H,W)

    def make_images(part: slice) -> torch.Tensor:
        return blend(weights, endpoints, part).clamp_(0, 1)

    confs = confidences_of(model, make_images, point_labels, total, chunk_size, precision)
    return confs.view(len(starts), p).cpu()


def limbs_and_chords(model: nn.Module, source: torch.Tensor, label: int, blind_spots: torch.Tensor,
                     pairs: list[tuple[int, int]], triangle_confs: torch.Tensor,
                     chunk_size: int = 512, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """p_label at the 21 points of each limb (source -> blind spot r) and each chord (blind spot
    a -> blind spot b, for (a, b) in pairs), reusing the triangles' points.

    source: (C,H,W) in [0,1]; blind_spots: (R,C,H,W); triangle_confs: (len(pairs),66), this
    source's `source_hull_confidences` over the same pairs (n = 10). The even points of every
    segment (t = 0, 0.1, ..., 1) are points of a triangle's edge and are read from
    triangle_confs; only the 10 odd points (t = 0.05, 0.15, ..., 0.95) are evaluated here. A limb's
    even points come from the last pair that has its blind spot as a vertex.
    Returns (limbs (R,21), chords (len(pairs),21)), float32 on the CPU.
    """
    edges, rounds = triangle_edges(), len(blind_spots)
    limbs = torch.full((rounds, SEGMENT_POINTS), float("nan"))
    chords = torch.empty(len(pairs), SEGMENT_POINTS)
    for m, (a, b) in enumerate(pairs):
        chords[m, ::2] = triangle_confs[m, edges["chord"]]
        for r, edge in ((b, "second"), (a, "first")):
            limbs[r, ::2] = triangle_confs[m, edges[edge]]
    if torch.isnan(limbs[:, 0]).any():
        raise ValueError("every blind spot must be a vertex of one of the pairs")
    odd = range(1, SEGMENT_POINTS, 2)
    limbs[:, 1::2] = segment_confidences(model, source.expand_as(blind_spots), blind_spots,
                                         torch.full((rounds,), int(label)), chunk_size=chunk_size,
                                         precision=precision, at=odd)
    first = blind_spots[[a for a, _ in pairs]]
    second = blind_spots[[b for _, b in pairs]]
    chords[:, 1::2] = segment_confidences(model, first, second,
                                          torch.full((len(pairs),), int(label)),
                                          chunk_size=chunk_size, precision=precision, at=odd)
    return limbs, chords


def segment_stats(limbs: np.ndarray, chords: np.ndarray,
                  deltas: Sequence[float] = SEGMENT_DELTAS) -> dict[str, np.ndarray]:
    """Table 2b per source: limbs (N,R,P) and chords (N,M,P) source-class confidences, point 0 of
    a limb being the source (p_src). Returns (N,) float64 arrays limbs_kept_{d} and
    chords_kept_{d}: the fraction of the source's limbs (chords) whose minimum over all P points,
    ends included, stays above p_src - d (strictly)."""
    limbs, chords = np.asarray(limbs, dtype=np.float64), np.asarray(chords, dtype=np.float64)
    p_src = limbs[:, 0, 0]
    stats = {}
    for d in deltas:
        stats[f"limbs_kept_{d:g}"] = (limbs.min(axis=2) > p_src[:, None] - d).mean(axis=1)
        stats[f"chords_kept_{d:g}"] = (chords.min(axis=2) > p_src[:, None] - d).mean(axis=1)
    return stats


def delta_curve(hull_confs: np.ndarray, deltas: Sequence[float] = DELTA_CURVE) -> np.ndarray:
    """Per source, the fraction of all its triangle points with p > p_src - delta.

    hull_confs: (N,M,P) confidences in `triangle_grid` order (point 0 the source; triangles with
    NaN are left out). Returns (N,len(deltas)) float64, NaN for a source without triangles.
    """
    confs = np.asarray(hull_confs, dtype=np.float64)
    p_src = confs[:, :, :1]
    valid = np.isfinite(confs).all(axis=2)  # (N,M)
    out = np.full((len(confs), len(deltas)), np.nan)
    counts = valid.sum(axis=1) * confs.shape[2]
    for k, d in enumerate(deltas):
        above = ((confs > p_src - d) & valid[:, :, None]).sum(axis=(1, 2))
        out[:, k] = np.where(counts > 0, above / np.maximum(counts, 1), np.nan)
    return out


def kept_stats(limbs: np.ndarray, chords: np.ndarray, triangles: np.ndarray,
               deltas: Sequence[float] = SEGMENT_DELTAS) -> dict[str, float]:
    """One source's limbs (R,P), chords (M,P) and triangles (M,66) (`triangle_grid` order),
    source-class confidences, point 0 of a limb and of a triangle being the source (p_src):
    limbs_kept_{d} and chords_kept_{d} as `segment_stats`, and triangles_kept_{d}, the fraction
    of triangles whose minimum over the grid stays above p_src - d (strictly)."""
    limbs = np.asarray(limbs, dtype=np.float64)
    stats = {k: float(v[0]) for k, v in segment_stats(limbs[None], np.asarray(chords)[None],
                                                      deltas).items()}
    p_src = limbs[0, 0]
    for d in deltas:
        stats[f"triangles_kept_{d:g}"] = float((np.asarray(triangles).min(axis=1) > p_src - d).mean())
    return stats
