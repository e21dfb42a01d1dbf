"""The CIFAR-10 full_eval of docs/results-cifar10.md (both ResNet-20s) at reduced size, in fp32 and in bf16.

    python benchmarks/bench_full_eval.py --cifar_path ../shared/data/cifar10 --threads 2

Each model runs lst.experiments.run_full_eval with the paper's hyperparameters (eta 1e-2, T 400,
delta 0.2, eps 2e-3, batch 100, --get_final_imgs) on --num_samples sources x 5 rounds, fp32 and
bf16 one after the other (interleaved; the minimum over --repeats is kept). Everything but
process start and model loading is timed: choosing the sources (always fp32), LST, the distances
and the triangles. It prints the wall-time ratio per model and, side by side, the mean of every
Table 1 and Table 2 column and the share of bf16 blind spots that break the level set in fp32.
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
from lst import LSTSettings  # noqa: E402
from lst.data import load_dataset  # noqa: E402
from lst.experiments import run_full_eval  # noqa: E402
from lst.tables import TABLE1, TABLE2  # noqa: E402
from models import load_model  # noqa: E402

PAPER = dict(step_size=1e-2, iters=400, pthresh=0.2, adv_step_size=2e-3, log_step=20)


def timed_run(model, dataset, precision: str, num_samples: int) -> tuple[float, dict]:
    settings = LSTSettings(**PAPER, precision=precision)
    started = time.perf_counter()
    results, _ = run_full_eval(model, dataset, settings, num_samples=num_samples, rounds=5,
                               batch_size=100, get_final_imgs=True)
    return time.perf_counter() - started, results


def means(results: dict) -> dict[str, float]:
    kept = np.asarray(results["kept"], dtype=bool)
    out = {f"T1 {name}": float(np.nanmean(np.asarray(results[key])[kept]))
           for name, key in TABLE1 if key != "lpips"}
    out.update({f"T2 {name}": float(np.nanmean(results["hull_stats"][key])) for name, key in TABLE2})
    out["fp32 violations"] = results["float32_violations"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cifar_path", default="../shared/data/cifar10")
    p.add_argument("--models", nargs="+", default=["resnet20-normal", "resnet20-linf"])
    p.add_argument("--num_samples", type=int, default=20, help="sources (x 5 rounds)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset("cifar10", root=args.cifar_path)
    speed, science = [], {}
    for name in args.models:
        model, _ = load_model(name, "cifar10")
        times = {"fp32": [], "bf16": []}
        for _ in range(args.repeats):
            for precision in ("fp32", "bf16"):
                seconds, results = timed_run(model, dataset, precision, args.num_samples)
                times[precision].append(seconds)
                science[(name, precision)] = means(results)
        fp32, bf16 = min(times["fp32"]), min(times["bf16"])
        speed.append([name, 5 * args.num_samples, f"{fp32:.1f}", f"{bf16:.1f}", f"{fp32 / bf16:.2f}"])
    print(tabulate(speed, headers=["model", "pairs", "fp32 s", "bf16 s", "fp32 / bf16"]))
    print()
    columns = list(next(iter(science.values())))
    rows = []
    for column in columns:
        row = [column]
        for name in args.models:
            a, b = science[(name, "fp32")][column], science[(name, "bf16")][column]
            row += [f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
        rows.append(row)
    headers = ["mean of"] + [f"{n} {h}" for n in args.models for h in ("fp32", "bf16", "diff")]
    print(tabulate(rows, headers=headers))


if __name__ == "__main__":
    main()
