"""The whole walk a user waits for: the paper's arithmetic against the fastest safe
configuration, on the same CIFAR-10 pairs, in one process.

    python benchmarks/bench_end_to_end.py --cifar_path DIR --threads 2
    python benchmarks/bench_end_to_end.py --cifar_path DIR --models resnet20-normal --repeats 3

For each model, --num_pairs pairs chosen as full_eval chooses them (`bench_schedule.cifar_pairs`)
and the paper's hyperparameters (eta 1e-2, delta 0.2, eps 2e-3), two configurations:

  paper    the fixed schedule, 400 iterations, float32: the authors' arithmetic (the engine
           matches their final code: benchmarks/paper_code_check.py)
  fastest  the adaptive schedule with its defaults and --precision auto (bf16 where the CPU has
           instructions for it, float32 elsewhere), at most 400 iterations
  as near  the same, each pair stopping once it is as near its target as the paper's walk got
           (`stop_distances`, the per-pair form of --stop_distance): the same closeness

each timed as `level_set_traversal` over all pairs (batches of --batch_size, after one untimed
forward pass), interleaved and the round repeated --repeats times; the table gives the minimum
wall time of each, the paper's over each other's, and what the walks reached: passes a blind spot (median,
90th percentile), distance left |x - x_t| / |x_s - x_t| (median), SSIM to the target (median),
and the pairs whose blind spot is below p0 - delta when re-evaluated in float32. Name the CPU
(lscpu) beside the figures.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
import lst  # noqa: E402
from bench_schedule import PAPER, cifar_pairs  # noqa: E402
from lst.data import load_dataset  # noqa: E402
from lst.experiments import float32_violations  # noqa: E402
from lst.precision import resolve_precision  # noqa: E402
from models import load_model  # noqa: E402


def configurations(device: torch.device) -> dict[str, lst.LSTSettings]:
    """The paper's configuration and the fastest safe one, by name."""
    fastest_precision, _ = resolve_precision("auto", device)
    fastest = lst.LSTSettings(**PAPER, iters=400, schedule="adaptive", precision=fastest_precision)
    return {"paper": lst.LSTSettings(**PAPER, iters=400), "fastest": fastest, "as near": fastest}


def walk_all(model: torch.nn.Module, pairs: tuple, settings: lst.LSTSettings, batch_size: int,
             stop_distances: torch.Tensor | None = None) -> tuple[float, dict]:
    """All pairs in batches: (wall seconds, what the walks reached, per pair); stop_distances
    (N,), if given, each pair's own stop distance."""
    x, y, t, t_labels = pairs
    start, parts = time.perf_counter(), []
    for k in range(0, len(x), batch_size):
        part = slice(k, k + batch_size)
        parts.append(lst.level_set_traversal(
            model, x[part], y[part], t[part], settings, target_labels=t_labels[part],
            stop_distances=None if stop_distances is None else stop_distances[part]))
    seconds = time.perf_counter() - start
    joined = {name: torch.cat([getattr(r, name) for r in parts]) for name in
              ("kept", "passes", "distance_left", "init_confs", "final_confs", "final_images")}
    ssim = lst.image_distances(joined.pop("final_images"), t, lpips=False)["ssim"]
    return seconds, {**{name: value.numpy() for name, value in joined.items()}, "ssim": ssim}


def measure(name: str, dataset, num_pairs: int, batch_size: int, repeats: int) -> list:
    """One row of the table: the three configurations on the same pairs of model `name`."""
    model, _ = load_model(name, "cifar10")
    pairs = cifar_pairs(model, dataset, num_pairs)
    configs = configurations(next(model.parameters()).device)
    with torch.no_grad():
        model(pairs[0][:1])  # the first pass's one-time cost, outside the timing
    seconds, reached = {}, {}
    for _ in range(repeats):
        for config, settings in configs.items():
            stops = None if config != "as near" else torch.from_numpy(reached["paper"]["distance_left"])
            took, reached[config] = walk_all(model, pairs, settings, batch_size, stops)
            seconds[config] = min(seconds.get(config, float("inf")), took)
    row = [name, int(reached["paper"]["kept"].sum()), configs["fastest"].precision]
    for config, settings in configs.items():
        r = reached[config]
        kept = r["kept"]
        below = round(float32_violations(r["init_confs"], r["final_confs"], kept,
                                         settings.pthresh) * kept.sum())  # pairs, not a share
        row += [seconds[config], np.median(r["passes"][kept]), np.percentile(r["passes"][kept], 90),
                np.median(r["distance_left"][kept]), np.median(r["ssim"][kept]), below]
        if config != "paper":
            row.append(seconds["paper"] / seconds[config])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_path", required=True)
    p.add_argument("--models", nargs="+", default=["resnet20-normal", "vit-normal",
                                                   "resnet20-linf"])
    p.add_argument("--num_pairs", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset("cifar10", root=args.cifar_path)
    rows = [measure(name, dataset, args.num_pairs, args.batch_size, args.repeats)
            for name in args.models]
    columns = ["s", "passes", "passes p90", "left", "SSIM", "below p0 - delta"]
    print(tabulate(rows, floatfmt=".3f", headers=[
        "model", "pairs", "fastest: precision", *(f"paper: {c}" for c in columns),
        *(f"fastest: {c}" for c in columns), "paper / fastest (time)",
        *(f"as near: {c}" for c in columns), "paper / as near (time)"]))


if __name__ == "__main__":
    main()
