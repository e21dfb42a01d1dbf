"""How much the full_eval protocol moves Tables 1 and 2: the paper's final code's protocol
(--protocol paper) against this tool's, one difference at a time, and Table 2 over the paper's
64 triangle points against all 66 (docs/usage.md, "Differences from the paper's code").

    python benchmarks/protocol_effect.py --cifar_path DIR --num_samples 100 --threads 2

For each model, with the paper's hyperparameters and 5 rounds:
  paper    the pool is the model's example images (one per class, the first it classifies
           correctly with confidence > 0.6; a class without such an image is left out), each
           round a random derangement of the pool
  pool     the same pool, targets drawn as this tool draws them (another class, from
           (seed, source, round)): against "paper", the effect of the derangement
  ours     --num_samples sources spread over the classes, this tool's targets: against "pool",
           the effect of the sources (example images against a class-spread sample)
Each cell is a mean with its 95% bootstrap interval over sources.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lst import LSTSettings  # noqa: E402
from lst.data import DataError, load_dataset  # noqa: E402
from lst.experiments import example_targets, run_full_eval  # noqa: E402
from lst.hull import paper_grid_points, table2_stats  # noqa: E402
from lst.uncertainty import estimate  # noqa: E402
from models import load_model  # noqa: E402

PAPER = dict(step_size=1e-2, iters=400, pthresh=0.2, adv_step_size=2e-3, log_step=20)
TABLE1 = ("final_confs", "l2", "linf", "ssim")
TABLE2 = ("mean", "frac_above_0", "frac_above_0.1")


def cell(value) -> str:
    return f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"


def row(name: str, protocol: str, results: dict, all_confs: dict) -> list:
    """Table 1 over kept pairs and Table 2 over sources, at 66 and at 64 grid points."""
    kept = results["kept"]
    sources = np.broadcast_to(np.arange(len(kept))[:, None], kept.shape)
    cells = [int(kept.shape[0]), int(kept.sum())]
    cells += [cell(estimate(results[k][kept], sources[kept])) for k in TABLE1]
    for points in (None, paper_grid_points()):
        stats = table2_stats(all_confs["hull_confs"], points)
        cells += [cell(estimate(stats[k])) for k in TABLE2]
    return [name, protocol] + cells


def example_pool(model, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's example images (as --examples picks them) of every class that has one: an
    AT model may classify no image of a class correctly with confidence > 0.6."""
    images, classes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for c in range(10):
            try:
                image, label, _ = example_targets(model, dataset, [c], Path(folder), "cifar10")
            except DataError as err:
                print(f"no example image: {err}", flush=True)
                continue
            images.append(image)
            classes.append(label)
    return torch.cat(images), torch.cat(classes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_path", required=True)
    p.add_argument("--models", nargs="+", default=["resnet20-normal", "resnet20-linf"])
    p.add_argument("--num_samples", type=int, default=100, help="sources of 'ours' (x 5 targets)")
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save", default=None, help="also keep each run's results in this folder")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset("cifar10", root=args.cifar_path)
    settings = LSTSettings(**PAPER)
    rows = []
    for name in args.models:
        model, _ = load_model(name, "cifar10")
        pool = TensorDataset(*example_pool(model, dataset))
        runs = {"paper": (pool, dict(protocol="paper", num_samples=len(pool))),
                "pool": (pool, dict(num_samples=len(pool))),
                "ours": (dataset, dict(num_samples=args.num_samples))}
        for protocol, (data, kwargs) in runs.items():
            results, all_confs = run_full_eval(model, data, settings, rounds=5,
                                               batch_size=args.batch_size, get_final_imgs=True,
                                               **kwargs)
            rows.append(row(name, protocol, results, all_confs))
            if args.save:
                out = Path(args.save)
                out.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(out / f"{name}_{protocol}.npz", **{
                    k: v for k, v in {**results, **all_confs}.items() if isinstance(v, np.ndarray)})
            print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    heads = (["model", "protocol", "sources", "pairs"] + ["final conf.", "L2 (norm.)", "Linf", "SSIM"]
             + [f"{h} ({n})" for n in (66, 64) for h in ("mean conf.", "frac > p_src", "frac > p_src-0.1")])
    print(tabulate(rows, headers=heads, tablefmt="github"))


if __name__ == "__main__":
    main()
