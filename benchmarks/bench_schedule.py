"""The adaptive step schedule against the paper's fixed one: passes and wall time to the same
closeness, and the closeness reached with the same passes.

    python benchmarks/bench_schedule.py --cifar_path DIR --threads 2
    python benchmarks/bench_schedule.py --cifar_path DIR --models resnet20-normal --num_pairs 20

For each model, --num_pairs CIFAR-10 pairs chosen as full_eval chooses them (sources classified
correctly with confidence > 0.6, spread over the classes; one target of another class each), and
three walks with the paper's hyperparameters (eta 1e-2, delta 0.2, eps 2e-3), one after the
other:

  fixed        the paper's schedule, --iters steps
  to closeness adaptive, each pair stopping once it is at least as close to its target as the
               fixed walk got (`stop_distances`), at most --iters steps
  same budget  adaptive that never stops early (no closeness or stall stop): --iters steps
  defaults     adaptive with its default stops (stop_distance, stall_steps), what a user gets

Passes are counted with a forward hook on the model (images through it, minus the clean pass
that measures p0), and checked against the per-pair `passes` the walks report. Closeness is the
distance left, |x - x_t| / |x_s - x_t|. Per model the table gives the medians over pairs and
the ratios fixed / adaptive of passes (median of the per-pair ratios) and of wall time. Name
the CPU (lscpu) beside the figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lst  # noqa: E402
from lst.data import dataset_labels, load_dataset, stack_items  # noqa: E402
from lst.sampling import assign_targets, select_sources  # noqa: E402
from models import load_model  # noqa: E402

PAPER = dict(step_size=1e-2, pthresh=0.2, adv_step_size=2e-3)


class PassCounter:
    """Counts the images the model sees, by a forward hook."""

    def __init__(self, model: torch.nn.Module):
        self.images = 0
        model.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.images += len(inputs[0])


def walk(model, counter: PassCounter, pairs: tuple, iters: int, **settings) -> tuple:
    """One timed walk over all pairs; returns (result, wall seconds, passes counted by the hook)."""
    x, y, t, t_labels = pairs
    counter.images = 0
    started = time.perf_counter()
    result = lst.level_set_traversal(model, x, y, t, iters=iters, target_labels=t_labels,
                                     **PAPER, **settings)
    seconds = time.perf_counter() - started
    walked = counter.images - len(x)  # the clean pass for p0 is not a step
    assert walked == int(result.passes.sum()), (walked, int(result.passes.sum()))
    return result, seconds, walked


def cifar_pairs(model: torch.nn.Module, dataset, num_pairs: int) -> tuple:
    """num_pairs pairs as full_eval chooses them (sources the model classifies correctly with
    confidence > 0.6, spread over the classes; one target of another class each), seed 0:
    (sources, labels, targets, target labels), (N,3,32,32) in [0,1] and (N,) int64."""
    pool = select_sources(model, dataset, num_pairs, seed=0)
    targets = pool[assign_targets(dataset_labels(dataset)[pool], 1, seed=0)[:, 0]]
    return (*stack_items(dataset, pool), *stack_items(dataset, targets))


def compare(name: str, dataset, num_pairs: int, iters: int, batch: int) -> list:
    model, _ = load_model(name, "cifar10")
    counter = PassCounter(model)
    pairs = cifar_pairs(model, dataset, num_pairs)
    rows = {"fixed": [], "to closeness": [], "same budget": [], "defaults": []}
    for start in range(0, num_pairs, batch):
        x, y, t, t_labels = (part[start:start + batch] for part in pairs)
        fixed = walk(model, counter, (x, y, t, t_labels), iters)
        closeness = fixed[0].distance_left
        rows["fixed"].append(fixed)
        rows["to closeness"].append(walk(model, counter, (x, y, t, t_labels), iters,
                                         schedule="adaptive", stop_distances=closeness))
        rows["same budget"].append(walk(model, counter, (x, y, t, t_labels), iters,
                                        schedule="adaptive", stop_distance=0.0, stall_steps=0))
        rows["defaults"].append(walk(model, counter, (x, y, t, t_labels), iters,
                                     schedule="adaptive"))
    out = {}
    for kind, runs in rows.items():
        result = [r for r, _, _ in runs]
        out[kind] = {
            "kept": torch.cat([r.kept for r in result]).numpy(),
            "left": torch.cat([r.distance_left for r in result]).numpy(),
            "passes": torch.cat([r.passes for r in result]).numpy().astype(float),
            "drop": torch.cat([r.init_confs - r.final_confs for r in result]).numpy(),
            "seconds": sum(s for _, s, _ in runs)}
    kept = out["fixed"]["kept"]
    fixed, to, same, plain = (out[k] for k in ("fixed", "to closeness", "same budget", "defaults"))
    reached = kept & (to["left"] <= fixed["left"] + 1e-6)
    for run in out.values():  # the level set, checked where the walk says it ended
        assert (run["drop"][kept] < PAPER["pthresh"]).all()
    return [name, int(kept.sum()),
            np.median(fixed["left"][kept]), np.median(fixed["passes"][kept]), fixed["seconds"],
            f"{reached.sum()}/{kept.sum()}", np.median(to["passes"][reached]), to["seconds"],
            np.median(fixed["passes"][reached] / to["passes"][reached]),
            fixed["seconds"] / to["seconds"],
            np.median(same["left"][kept]),
            np.median(plain["left"][kept]), np.median(plain["passes"][kept]),
            np.percentile(plain["passes"][kept], 90), fixed["seconds"] / plain["seconds"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_path", required=True)
    p.add_argument("--models", nargs="+", default=["resnet20-normal", "resnet20-linf",
                                                   "vit-normal"])
    p.add_argument("--num_pairs", type=int, default=50)
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset("cifar10", root=args.cifar_path)
    rows = [compare(name, dataset, args.num_pairs, args.iters, args.batch_size)
            for name in args.models]
    print(tabulate(rows, floatfmt=".3f", headers=[
        "model", "pairs", "fixed: left", "fixed: passes", "fixed: s",
        "adaptive reached", "passes to it", "s to it", "passes fixed/adaptive",
        "time fixed/adaptive", f"adaptive left after {args.iters}",
        "defaults: left", "defaults: passes", "defaults: passes p90",
        "defaults: time fixed/adaptive"]))


if __name__ == "__main__":
    main()
