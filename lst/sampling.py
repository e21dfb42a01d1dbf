"""The sampling protocol of both modes (docs/design.md, "Modes"): which images are the sources
and the targets of a run.

  select_targets   --examples: per class, the first image the model classifies correctly with
                   confidence > --min_confidence (the paper's 0.6 by default)
  select_sources   --full_eval: sources spread over classes, in an order shuffled from the seed
  assign_targets   --full_eval: each source's targets, of other classes, from (seed, source, round)
  derangement_targets  --full_eval --protocol paper: each round a random derangement of the pool
  every_pair_targets   --full_eval --protocol pairs: every ordered pair of the pool, once
  random_classes   --random_target_classes

Every choice depends on the seed, the data and the model only, never on the batch size, the
number of processes or a resume.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from .batching import chunks
from .confidence import predict
from .data import DataError, dataset_labels, stack_items

PROTOCOLS = ("ours", "paper", "pairs")  # full_eval's sources and targets (`run_full_eval`)
MIN_CONFIDENCE = 0.6  # the paper's: a source or example image is classified right above it


def _confident(model: nn.Module, dataset: Dataset, candidates: Sequence[int],
               min_confidence: float, batch_size: int) -> np.ndarray:
    """Mask over `candidates`: correctly classified with confidence > min_confidence."""
    ok = np.zeros(len(candidates), dtype=bool)
    for part in chunks(len(candidates), batch_size):
        images, labels = stack_items(dataset, candidates[part])
        predicted, conf = predict(model, images)
        ok[part] = ((predicted.cpu() == labels) & (conf.cpu() > min_confidence)).numpy()
    return ok


def select_targets(model: nn.Module, dataset: Dataset, classes: Sequence[int], *,
                   min_confidence: float = MIN_CONFIDENCE, batch_size: int = 64) -> list[int]:
    """For each class, the index of its first image the model gets right with conf > threshold.

    Raises DataError for a class out of range or one with no such image.
    """
    labels = dataset_labels(dataset)
    num_classes = int(labels.max()) + 1
    chosen = []
    for cls in classes:
        if not 0 <= cls < num_classes:
            raise DataError(f"class {cls} is out of range: this dataset has classes 0..{num_classes - 1}")
        candidates = np.flatnonzero(labels == cls)
        found = None
        for part in chunks(len(candidates), batch_size):
            ok = _confident(model, dataset, candidates[part], min_confidence, batch_size)
            if ok.any():
                found = int(candidates[part][np.argmax(ok)])
                break
        if found is None:
            raise DataError(f"no image of class {cls} is classified correctly with confidence "
                            f"> {min_confidence}")
        chosen.append(found)
    return chosen


def balanced_allocation(capacity: Sequence[float], total: int) -> list[int]:
    """Split `total` over classes as evenly as their capacities allow (water-filling).

    Equal shares first; what a class cannot take goes to the others; a remainder goes to the
    lowest class indices. Returns one count per class, summing to min(total, sum(capacity)).
    """
    alloc = [0] * len(capacity)
    remaining = total
    active = [c for c, cap in enumerate(capacity) if cap > 0]
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        for c in active:
            give = int(min(share, capacity[c] - alloc[c], remaining))
            alloc[c] += give
            remaining -= give
        active = [c for c in active if alloc[c] < capacity[c]]
    return alloc


def select_sources(model: nn.Module, dataset: Dataset, num_samples: int, *, seed: int = 0,
                   min_confidence: float = MIN_CONFIDENCE, batch_size: int = 256) -> np.ndarray:
    """`num_samples` indices of images classified correctly with conf > threshold, class-spread.

    Each class's images are visited in an order shuffled from `seed`; each class contributes its
    first qualifying images, as evenly over classes as they allow (`balanced_allocation`). The
    result, interleaved class by class, depends on the seed and the data only, not on the batch
    size. Raises DataError when the split is too small or too few images qualify.
    """
    labels = dataset_labels(dataset)
    if num_samples > len(labels):
        raise DataError(f"asked for {num_samples} samples but the split has {len(labels)} images")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    order = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    found: list[list[int]] = [[] for _ in classes]
    visited = [0] * len(classes)
    while True:
        capacity = [len(found[c]) if visited[c] == len(order[c]) else np.inf
                    for c in range(len(classes))]
        alloc = balanced_allocation(capacity, num_samples)
        todo = [c for c in range(len(classes)) if len(found[c]) < alloc[c]]
        if not todo:
            break
        per_class = max(1, batch_size // len(todo))
        candidates = []
        for c in todo:
            want = min(per_class, alloc[c] - len(found[c]))
            candidates.append(order[c][visited[c]:visited[c] + want])
            visited[c] += len(candidates[-1])
        flat = np.concatenate(candidates)
        ok = _confident(model, dataset, flat, min_confidence, batch_size)
        for c, part in zip(todo, np.split(ok, np.cumsum([len(x) for x in candidates])[:-1])):
            found[c].extend(order[c][visited[c] - len(part):visited[c]][part].tolist())
    if sum(alloc) < num_samples:
        raise DataError(f"only {sum(alloc)} images are classified correctly with confidence "
                        f"> {min_confidence}; asked for {num_samples}")
    ranked = sorted((rank, c, idx) for c in range(len(classes))
                    for rank, idx in enumerate(found[c][:alloc[c]]))
    return np.array([idx for _, _, idx in ranked])


def assign_targets(labels: np.ndarray, rounds: int, seed: int = 0) -> np.ndarray:
    """For each source and round, the position (in the same pool) of a target of another class.

    labels: (n,) classes of the pool. Returns (n, rounds) int64. Each entry is drawn from a stream
    seeded by (seed, source position, round), so it does not depend on how work is split.
    """
    labels = np.asarray(labels)
    n = len(labels)
    out = np.empty((n, rounds), dtype=np.int64)
    for i in range(n):
        others = np.flatnonzero(labels != labels[i])
        if len(others) == 0:
            raise DataError("every source has the same class: no target of another class")
        for r in range(rounds):
            out[i, r] = others[np.random.default_rng([seed, i, r]).integers(len(others))]
    return out


def derangement_targets(pool_size: int, rounds: int, seed: int = 0) -> np.ndarray:
    """The paper's final code's targets (--protocol paper): round r is a permutation of the pool
    with no fixed point, uniform over all such (rejection sampling), from a stream seeded by
    (seed, round). So every pool image is a target exactly once per round, never its own.

    Returns (pool_size, rounds) int64: entry [i, r] is the position of source i's target in
    round r. Unlike the paper's code, a pool that is not a multiple of the batch size changes
    nothing (docs/usage.md, "Differences from the paper's code").
    """
    if pool_size < 2:
        raise DataError(f"a derangement needs at least 2 pool images, got {pool_size}")
    out = np.empty((pool_size, rounds), dtype=np.int64)
    identity = np.arange(pool_size)
    for r in range(rounds):
        rng = np.random.default_rng([seed, pool_size, r])
        order = rng.permutation(pool_size)
        while (order == identity).any():  # about e = 2.7 draws on average
            order = rng.permutation(pool_size)
        out[:, r] = order
    return out


def every_pair_targets(pool_size: int, rounds: int) -> np.ndarray:
    """--protocol pairs: round r's target of pool image i is image (i + r + 1) mod pool_size.
    Each round is a derangement, and pool_size - 1 rounds give every ordered pair of the pool
    exactly once: the whole of a small pool (the photos), with nothing drawn at random.

    Returns (pool_size, rounds) int64; DataError unless 1 <= rounds <= pool_size - 1.
    """
    if not 1 <= rounds <= pool_size - 1:
        raise DataError(f"a pool of {pool_size} images has {pool_size - 1} targets per source: "
                        f"--rounds must be 1..{pool_size - 1} (all: every ordered pair), "
                        f"got {rounds}")
    return (np.arange(pool_size)[:, None] + np.arange(1, rounds + 1)[None, :]) % pool_size


def random_classes(num_classes: int, count: int, seed: int = 0) -> list[int]:
    """`count` distinct valid classes drawn from `seed` (--random_target_classes)."""
    if not 0 < count <= num_classes:
        raise DataError(f"cannot draw {count} distinct classes out of {num_classes}")
    return sorted(np.random.default_rng(seed).choice(num_classes, count, replace=False).tolist())


def example_image_names(dataset_name: str, classes: Sequence[int]) -> list[str]:
    """The file names of the example images: {dataset_name}_target_{class}.png."""
    return [f"{dataset_name}_target_{c}.png" for c in classes]
