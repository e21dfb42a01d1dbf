"""How much the adversarial term's size changes the blind spots: this tool's per-sample gradient
(the same as the authors' final code, commit 76b1cfa) against the authors' superseded May 2023
code (commit 9430ae0), whose gradient is that of the batch's *mean* loss (docs/usage.md, "The
May 2023 version of the authors' code").

    python benchmarks/paper_adv_term.py --cifar_path DIR --threads 2

The May 2023 code accumulates `adv += eps/2 * g` with g the input gradient of
CrossEntropyLoss(reduction="mean"), so each sample's increment is 1/B of its own gradient's, B
the number of sources in its batch; the final code sums the loss, as this tool does. The
projection does not depend on the gradient's scale, so dividing the gradient by B inside the
engine reproduces the May 2023 code's arithmetic exactly. For each model, the same full_eval
pairs (the paper's hyperparameters, batch B = --batch_size) run both ways, one after the other;
it prints the Table 1 means and the accept rate.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lst.walk as walk  # noqa: E402
from lst import LSTSettings  # noqa: E402
from lst.data import load_dataset  # noqa: E402
from lst.experiments import run_full_eval  # noqa: E402
from models import load_model  # noqa: E402

PAPER = dict(step_size=1e-2, iters=400, pthresh=0.2, adv_step_size=2e-3, log_step=20)
OWN_GRADIENT = walk.confidence_and_grad


def mean_loss_gradient(model, x, labels, precision="fp32"):
    """The May 2023 code's gradient: that of the batch's mean loss, each sample's divided by B."""
    probs, grad = OWN_GRADIENT(model, x, labels, precision)
    return probs, grad / len(x)


def run(model, dataset, num_samples: int, batch_size: int, paper: bool) -> dict:
    walk.confidence_and_grad = mean_loss_gradient if paper else OWN_GRADIENT
    try:
        results, _ = run_full_eval(model, dataset, LSTSettings(**PAPER), num_samples=num_samples,
                                   rounds=5, batch_size=batch_size)
    finally:
        walk.confidence_and_grad = OWN_GRADIENT
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_path", required=True)
    p.add_argument("--models", nargs="+", default=["resnet20-normal", "resnet20-linf"])
    p.add_argument("--num_samples", type=int, default=20, help="sources (x 5 targets each)")
    p.add_argument("--batch_size", type=int, default=100, help="B of the May 2023 code's mean loss")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset("cifar10", root=args.cifar_path)
    rows = []
    for name in args.models:
        model, _ = load_model(name, "cifar10")
        for paper in (False, True):
            r = run(model, dataset, args.num_samples, args.batch_size, paper)
            kept = r["kept"]
            rows.append([name, f"May 2023 (1/{args.batch_size})" if paper else "final code and this tool's",
                         int(kept.sum())] + [float(np.mean(r[k][kept])) for k in
                                              ("final_confs", "l2", "linf", "ssim", "accept_rate")])
    print(tabulate(rows, headers=["model", "adversarial term", "pairs", "final conf.",
                                  "L2 (norm.)", "Linf", "SSIM", "accept rate"], floatfmt=".3f"))


if __name__ == "__main__":
    main()
