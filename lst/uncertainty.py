"""How sure a mean is: 95% bootstrap confidence intervals that resample sources, not pairs.

The pairs of one source share its image (and, for triangles, its blind spots), so they are not
independent draws: resampling pairs would make intervals too narrow. Here a mean over pairs is a
ratio of per-source sums, and the resampling (scipy.stats.bootstrap, percentile method) draws
whole sources with replacement (docs/design.md, "Uncertainty").
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap

RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean over pairs with its spread and its 95% interval over sources.

    mean, std: over the pairs; low, high: the bootstrap interval (NaN with fewer than two
    sources, or when not asked for); sources, pairs: how many went in (pairs with a NaN value
    left out).
    """

    mean: float
    std: float
    low: float
    high: float
    sources: int
    pairs: int

    def show(self, ci: bool, pm: str = "±") -> str:
        """'0.962 ± 0.011' or, with ci, '0.962 [0.955, 0.968]'; 'n/a' without values."""
        if self.pairs == 0:
            return "n/a"
        if not ci:
            return f"{self.mean:.3f} {pm} {self.std:.3f}"
        if not np.isfinite(self.low):
            return f"{self.mean:.3f} [n/a]"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _ratio_of_sums(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return sums.sum(axis=axis) / counts.sum(axis=axis)


def estimate(values: np.ndarray, sources: np.ndarray | None = None, *, interval: bool = True,
             resamples: int = RESAMPLES, seed: int = SEED, level: float = 0.95) -> Estimate:
    """The mean of `values` (any shape; NaN left out) with a bootstrap interval over sources.

    sources: the source of each value (same shape; any hashable ints), by default each value its
    own source (values that are already one per source). The interval resamples sources with
    replacement, `resamples` times from `seed` (the same draws for every call with the same
    sources), and takes the pooled mean of their values each time. Without `interval` nothing
    is resampled and low, high are NaN (for mean ± std only).
    """
    values = np.asarray(values, dtype=np.float64)
    sources = (np.arange(values.size) if sources is None
               else np.broadcast_to(np.asarray(sources), values.shape).ravel())
    values = values.ravel()
    finite = np.isfinite(values)
    values, sources = values[finite], sources[finite]
    if values.size == 0:
        return Estimate(np.nan, np.nan, np.nan, np.nan, 0, 0)
    ids, inverse = np.unique(sources, return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    low = high = np.nan
    if interval and len(ids) >= 2:
        with warnings.catch_warnings():  # all-equal values: a zero-width interval is the answer
            warnings.simplefilter("ignore")
            interval = bootstrap((sums, counts), _ratio_of_sums, n_resamples=resamples,
                                 paired=True, vectorized=True, confidence_level=level,
                                 method="percentile", rng=np.random.default_rng(seed)
                                 ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return Estimate(float(values.mean()), float(values.std()), low, high, len(ids), values.size)
