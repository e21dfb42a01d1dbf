"""`--compile` measured: the time to the first blind spot, the time per model pass and a whole run
of the README's size, with and without `torch.compile`, for the CIFAR-10 models and the
ImageNet model at 224x224, in the fastest safe configuration (adaptive schedule, --precision
auto).

    python benchmarks/bench_compile.py --cifar_path DIR --threads 2
    python benchmarks/bench_compile.py --cifar_path DIR --models resnet20-normal

Each (model, eager or compiled) runs in a process of its own with an empty inductor cache (a
user's first run compiles from scratch): first the walk of one pair (the time to the first blind
spot, compilation included), then the run the README describes for the dataset, timed alone:
every ordered pair of one example image per class (CIFAR-10: 10 classes, 90 pairs; photos: 5,
20 pairs), one batch, the paper's hyperparameters. The table gives both times, seconds per
model pass of the run (its time over the images the model saw), end to end (first + run), and
the ratio eager / compiled of the run and of end to end. Name the CPU (lscpu) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
PAPER = dict(step_size=1e-2, pthresh=0.2, adv_step_size=2e-3, iters=400)
DATASETS = {"tf_efficientnet_lite0-normal": "photos"}  # the others: cifar10


def measure(name: str, compiled: bool, cifar_path: str, threads: int) -> dict:
    """One model, eager or compiled, in this process: first blind spot, then the README run."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    import lst
    from lst.data import dataset_labels, load_dataset, stack_items
    from lst.precision import resolve_precision
    from lst.sampling import every_pair_targets
    from models import load_model

    torch.set_num_threads(threads)
    dataset_name = DATASETS.get(name, "cifar10")
    model, config = load_model(name, dataset_name)
    dataset = (load_dataset("photos", config=config) if dataset_name == "photos"
               else load_dataset("cifar10", root=cifar_path))
    labels = np.asarray(dataset_labels(dataset))
    first_of_class = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    images, classes = stack_items(dataset, first_of_class)
    n = len(first_of_class)
    src = np.repeat(np.arange(n), n - 1)
    tgt = every_pair_targets(n, n - 1).reshape(-1)
    settings = lst.LSTSettings(**PAPER, schedule="adaptive",
                               precision=resolve_precision("auto", "cpu")[0])
    seen = [0]
    model.register_forward_hook(lambda m, inputs, out: seen.__setitem__(0, seen[0] + len(inputs[0])))
    walker = torch.compile(model) if compiled else model
    start = time.perf_counter()
    lst.level_set_traversal(walker, images[src[:1]], classes[src[:1]], images[tgt[:1]], settings)
    first = time.perf_counter() - start
    seen[0] = 0
    start = time.perf_counter()
    result = lst.level_set_traversal(walker, images[src], classes[src], images[tgt], settings)
    run = time.perf_counter() - start
    kept = result.kept.numpy()
    return {"first": first, "run": run, "per_pass": run / seen[0], "pairs": len(src),
            "passes": float(np.median(result.passes.numpy()[kept])),
            "precision": settings.precision}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_path", default="")
    p.add_argument("--models", nargs="+", default=["resnet20-normal", "vit-normal",
                                                   "tf_efficientnet_lite0-normal"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # MODEL eager|compiled, in-process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "compiled", args.cifar_path,
                                 args.threads)))
        return
    rows = []
    for name in args.models:
        got = {}
        for mode in ("eager", "compiled"):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                out = subprocess.run([sys.executable, __file__, "--one", name, mode,
                                      "--cifar_path", args.cifar_path,
                                      "--threads", str(args.threads)],
                                     env=env, capture_output=True, text=True, check=True)
            got[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        e, c = got["eager"], got["compiled"]
        rows.append([name, e["precision"], e["pairs"], e["passes"],
                     e["first"], c["first"], e["run"], c["run"],
                     1e3 * e["per_pass"], 1e3 * c["per_pass"],
                     e["first"] + e["run"], c["first"] + c["run"],
                     e["run"] / c["run"], (e["first"] + e["run"]) / (c["first"] + c["run"])])
    print(tabulate(rows, floatfmt=".2f", headers=[
        "model", "precision", "pairs", "passes", "first s: eager", "first s: compiled",
        "run s: eager", "run s: compiled", "ms/image-pass: eager", "ms/image-pass: compiled",
        "end to end: eager", "end to end: compiled", "run eager/compiled",
        "end to end eager/compiled"]))


if __name__ == "__main__":
    main()
