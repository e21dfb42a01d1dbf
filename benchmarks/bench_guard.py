"""The fast path's level-set guarantee (lst.guard): bf16 walks with the adaptive schedule and its
retry, every blind spot checked in float32, against the same walks without the check.

    python benchmarks/bench_guard.py --cifar_path DIR --threads 2 --num_pairs 500
    python benchmarks/bench_guard.py --cifar_path DIR --threads 2 --num_pairs 100 \\
        --baseline /tmp/before --repeats 2

For each model (resnet20-normal, vit-normal, resnet20-linf on CIFAR-10 pairs chosen as full_eval
chooses them, `bench_schedule.cifar_pairs`; photos: every ordered pair of the five photographs
with tf_efficientnet_lite0-normal at 224x224), the paper's hyperparameters (eta 1e-2, delta 0.2,
eps 2e-3), `--schedule adaptive` with its defaults (the retry on), at most 400 iterations, in
--precision (bf16). Each measurement runs in a process of its own on the tree it names: this one,
and with --baseline a checkout of the code before the check (`git worktree add /tmp/before
400eef3`), interleaved and repeated --repeats times. Per model and tree the table gives the
minimum wall time of the walks (`level_set_traversal` over batches of --batch_size, after one
untimed forward pass), the pairs below p0 - delta when their blind spot is evaluated again in
float32 here (p0 in float32 too), the largest such drop, the pairs below it once the blind
spot is rounded to 8 bits (what full_eval --get_final_imgs stored before it walked with
--quantize), the walks stepped back by the check (by how many iterates: 1, 2, or 3 = the clean
source), and the medians of passes and of the distance left. Name the CPU (lscpu) beside the
figures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("resnet20-normal", "vit-normal", "resnet20-linf", "photos")
# lst.settings.PAPER_HYPERPARAMETERS, written out: a worker imports `lst` from the tree it
# measures (the baseline has no such name), so this module imports nothing from lst itself
PAPER = dict(step_size=1e-2, pthresh=0.2, adv_step_size=2e-3, iters=400)


def measure(root: str, name: str, cifar_path: str | None, num_pairs: int, batch_size: int,
            precision: str, threads: int) -> dict:
    """One model's walks with the `lst` of tree `root`, in this process."""
    sys.path[:0] = [root, str(HERE)]
    import torch

    import lst
    from lst.confidence import class_confidence_of, probabilities
    from lst.data import load_dataset, stack_items
    from lst.sampling import every_pair_targets
    from models import load_model

    torch.set_num_threads(threads)
    if name == "photos":
        model, config = load_model("tf_efficientnet_lite0-normal", "photos")
        images, labels = stack_items(load_dataset("photos", config=config), range(5))
        src, tgt = np.repeat(np.arange(5), 4), every_pair_targets(5, 4).reshape(-1)
        x, y, t = images[src], labels[src], images[tgt]
    else:
        from bench_schedule import cifar_pairs

        model, _ = load_model(name, "cifar10")
        x, y, t, _ = cifar_pairs(model, load_dataset("cifar10", root=cifar_path), num_pairs)
    settings = lst.LSTSettings(**PAPER, schedule="adaptive", precision=precision)
    with torch.no_grad():
        model(x[:1])  # the first pass's one-time cost, outside the timing
    start, parts = time.perf_counter(), []
    for k in range(0, len(x), batch_size):
        part = slice(k, k + batch_size)
        parts.append(lst.level_set_traversal(model, x[part], y[part], t[part], settings))
    seconds = time.perf_counter() - start
    kept = torch.cat([r.kept for r in parts])
    blind_spots = torch.cat([r.final_images for r in parts])
    p0 = probabilities(model, x).gather(1, y.view(-1, 1)).squeeze(1)  # float32, as the check's
    drop = (p0 - class_confidence_of(model, blind_spots, y))[kept]
    eight_bit = (blind_spots * 255).round() / 255  # as full_eval --get_final_imgs stores them
    drop_8bit = (p0 - class_confidence_of(model, eight_bit, y))[kept]
    stepped = (torch.cat([r.stepped_back for r in parts])[kept].numpy()
               if getattr(parts[0], "stepped_back", None) is not None else None)
    passes = torch.cat([r.passes for r in parts])[kept].numpy()
    left = torch.cat([r.distance_left for r in parts])[kept].numpy()
    return {"seconds": seconds, "pairs": int(kept.sum()),
            "violations": int((drop >= PAPER["pthresh"]).sum()), "max_drop": float(drop.max()),
            "violations_8bit": int((drop_8bit >= PAPER["pthresh"]).sum()),
            "stepped_back": None if stepped is None else np.bincount(stepped, minlength=4).tolist(),
            "passes": float(np.median(passes)), "left": float(np.median(left))}


def run_worker(root: str, name: str, args: argparse.Namespace) -> dict:
    """`measure` in a process of its own (its own imports of `lst`), returned as a dict."""
    command = [sys.executable, __file__, "--worker", root, name, "--num_pairs",
               str(args.num_pairs), "--batch_size", str(args.batch_size), "--precision",
               args.precision, "--threads", str(args.threads)]
    if args.cifar_path:
        command += ["--cifar_path", args.cifar_path]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_path")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--num_pairs", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--baseline", default=None, help="a checkout of the code before the check")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", nargs=2, metavar=("ROOT", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker, args.cifar_path, args.num_pairs, args.batch_size,
                                 args.precision, args.threads)))
        return
    trees = {"checked": str(ROOT), **({"before": args.baseline} if args.baseline else {})}
    rows = []
    for name in args.models:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for tree, root in trees.items():
                got = run_worker(root, name, args)
                if tree not in best or got["seconds"] < best[tree]["seconds"]:
                    best[tree] = got
                print(f"{name} {tree}: {got}", file=sys.stderr, flush=True)
        for tree, got in best.items():
            ratio = (got["seconds"] / best["before"]["seconds"] if "before" in best else None)
            rows.append([name, tree, got["pairs"], got["seconds"], ratio, got["violations"],
                         got["max_drop"], got["violations_8bit"], got["stepped_back"],
                         got["passes"], got["left"]])
    print(tabulate(rows, floatfmt=".3f", headers=[
        "model", "tree", "pairs", "s (min)", "s / before", "below p0 - delta (float32)",
        "largest drop", "8-bit: below", "stepped back by 0,1,2,3", "passes (median)",
        "distance left (median)"]))


if __name__ == "__main__":
    main()
