"""How far a reduced-precision walk misjudges the level-set test: the rounding that
`lst.precision.CONFIDENCE_ROUNDING` must cover.

    python benchmarks/bench_rounding.py --cifar_path DIR --threads 2
    python benchmarks/bench_rounding.py --cifar_path DIR --models resnet20-normal photos --num_pairs 50

A walk in bf16 (or fp16) accepts a step while its own drop p0 - p, both confidences computed in
that arithmetic, is below delta. The guarantee is on the float32 drop. At every accepted iterate
of adaptive walks with the paper's hyperparameters (the CIFAR-10 pairs of `bench_schedule`, and
every ordered pair of `photos` with tf_efficientnet_lite0-normal at 224x224), this measures

    error = (p0 - p in float32) - (p0 - p in the walk's arithmetic)

(positive: the walk thinks the drop smaller than float32 does, the side that lets a blind spot
out of the level set), and, for the other design, p - p in float32 at the iterate alone (the
walk's p against float32 p0). The table gives, per model, the accepted iterates measured and
quantiles of each error, and the share of iterates whose drop is within 0.02 of delta (where an
error matters). The walks run without the acceptance margin (`acceptance_margin=0`), so the
errors are those of the arithmetic alone. Name the CPU (lscpu) beside the figures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import lst  # noqa: E402
from bench_schedule import PAPER, cifar_pairs  # noqa: E402
from lst.confidence import class_confidence_of  # noqa: E402
from lst.data import load_dataset, stack_items  # noqa: E402
from lst.recorders import Recorder  # noqa: E402
from lst.sampling import every_pair_targets  # noqa: E402
from models import load_model  # noqa: E402


class RoundingRecorder(Recorder):
    """At every accepted iterate: the walk's drop p0 - p and the float32 one, and the float32 p0."""

    def __init__(self, model: torch.nn.Module, init_confs: torch.Tensor) -> None:
        self.model, self.init_confs = model, init_confs
        self.walk_drop, self.float32_drop, self.conf_error = [], [], []

    def after_step(self, state, i: int, accept: torch.Tensor) -> None:
        if not accept.any():
            return
        x, label = state.x[accept], state.label[accept]
        p32 = class_confidence_of(self.model, x, label)
        p0_32 = self.init_confs.to(x.device)[state.rows[accept]]
        self.walk_drop.append((state.p0 - state.conf)[accept].cpu())
        self.float32_drop.append((p0_32 - p32).cpu())
        self.conf_error.append((state.conf[accept] - p32).cpu())


def pairs_of(name: str, cifar_path: str | None, num_pairs: int) -> tuple:
    """The model and its pairs: (model, sources, labels, targets)."""
    if name == "photos":
        model, data = load_model("tf_efficientnet_lite0-normal", "photos")
        images, labels = stack_items(load_dataset("photos", config=data), range(5))
        src, tgt = np.repeat(np.arange(5), 4), every_pair_targets(5, 4).reshape(-1)
        return model, images[src], labels[src], images[tgt]
    model, _ = load_model(name, "cifar10")
    x, y, t, _ = cifar_pairs(model, load_dataset("cifar10", root=cifar_path), num_pairs)
    return model, x, y, t


def measure(name: str, cifar_path: str | None, num_pairs: int, precision: str,
            batch_size: int) -> list:
    model, x, y, t = pairs_of(name, cifar_path, num_pairs)
    settings = lst.LSTSettings(**PAPER, iters=400, schedule="adaptive", precision=precision,
                               acceptance_margin=0.0)
    walk, f32, conf = [], [], []
    for k in range(0, len(x), batch_size):
        part = slice(k, k + batch_size)
        init = lst.confidence.probabilities(model, x[part]).gather(1, y[part].view(-1, 1))[:, 0]
        recorder = RoundingRecorder(model, init)
        lst.level_set_traversal(model, x[part], y[part], t[part], settings, recorders=[recorder])
        walk += recorder.walk_drop
        f32 += recorder.float32_drop
        conf += recorder.conf_error
    walk, f32, conf = (torch.cat(v).numpy().astype(np.float64) for v in (walk, f32, conf))
    error = f32 - walk
    near = np.abs(walk - PAPER["pthresh"]) < 0.02
    quantiles = (50, 99, 99.9, 100)
    return [name, precision, len(error), near.mean(),
            *np.percentile(error, quantiles), *np.percentile(conf, quantiles),
            np.percentile(error[near], 100) if near.any() else float("nan")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_path")
    p.add_argument("--models", nargs="+", default=["resnet20-normal", "vit-normal",
                                                   "resnet20-linf", "photos"])
    p.add_argument("--num_pairs", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(name, args.cifar_path, args.num_pairs, args.precision, args.batch_size)
            for name in args.models]
    q = ("median", "p99", "p99.9", "max")
    print(tabulate(rows, floatfmt=".4f", headers=[
        "model", "precision", "accepted iterates", "share within 0.02 of delta",
        *(f"drop error {n}" for n in q), *(f"p error {n}" for n in q),
        "drop error max, near delta"]))


if __name__ == "__main__":
    main()
