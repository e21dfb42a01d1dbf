"""LST at the paper's resolution on a real ImageNet classifier: seconds per blind spot and peak
memory of the fixed and adaptive schedules in fp32 and bf16, on every ordered pair of the
shipped photographs (`photos`, 224x224) with `tf_efficientnet_lite0-normal`.

    python benchmarks/bench_photos.py --threads 2
    python benchmarks/bench_photos.py --configs adaptive-bf16 adaptive-fp32 --repeats 3

The paper's hyperparameters (eta 1e-2, delta 0.2, eps 2e-3; fixed: 400 iterations). Each
configuration runs in a process of its own (so its peak resident memory, ru_maxrss, is its own),
the configurations one after the other and the whole round repeated; the table gives the
minimum wall time over the repeats of the walks alone (`level_set_traversal` on all pairs in one
batch, after one untimed forward pass), per blind spot, its ratio to the paper's configuration
(fixed, fp32), the process's peak memory, and the walks' medians: passes, distance left,
SSIM to the target, and the pairs below p0 - delta in float32. Name the CPU (lscpu) beside it.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("fixed-fp32", "fixed-bf16", "adaptive-fp32", "adaptive-bf16")
PAPER = dict(step_size=1e-2, pthresh=0.2, adv_step_size=2e-3, iters=400)


def measure(config: str, threads: int) -> dict:
    """One configuration in this process: the walks' wall time and what they reached."""
    sys.path.insert(0, str(ROOT))
    import torch

    import lst
    from lst.data import load_dataset, stack_items
    from lst.experiments import float32_violations
    from lst.sampling import every_pair_targets
    from models import load_model

    torch.set_num_threads(threads)
    schedule, precision = config.split("-")
    model, data = load_model("tf_efficientnet_lite0-normal", "photos")
    dataset = load_dataset("photos", config=data)
    images, labels = stack_items(dataset, range(len(dataset)))
    n = len(dataset)
    targets = every_pair_targets(n, n - 1)
    src = np.repeat(np.arange(n), n - 1)
    tgt = targets.reshape(-1)
    settings = lst.LSTSettings(**PAPER, schedule=schedule, precision=precision)
    with torch.no_grad():
        model(images[:1])  # the first pass's one-time cost, outside the timing
    start = time.perf_counter()
    result = lst.level_set_traversal(model, images[src], labels[src], images[tgt], settings)
    seconds = time.perf_counter() - start
    ssim = lst.image_distances(result.final_images, images[tgt], lpips=False)["ssim"]
    return {"config": config, "pairs": len(src), "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "passes": float(np.median(result.passes.numpy())),
            "distance_left": float(np.median(result.distance_left.numpy())),
            "ssim": float(np.median(np.asarray(ssim))),
            "violations": float32_violations(result.init_confs.numpy(), result.final_confs.numpy(),
                                             result.kept.numpy(), settings.pthresh)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one configuration
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads)))
        return
    runs: dict[str, list[dict]] = {c: [] for c in args.configs}
    for _ in range(args.repeats):
        for config in args.configs:
            out = subprocess.run([sys.executable, __file__, "--one", config, "--threads",
                                  str(args.threads)], capture_output=True, text=True, check=True)
            runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{config}: {runs[config][-1]['seconds']:.1f} s", file=sys.stderr)
    best = {c: min(r, key=lambda m: m["seconds"]) for c, r in runs.items()}
    paper = best.get("fixed-fp32")
    rows = [[c, m["pairs"], f"{m['seconds'] / m['pairs']:.2f}",
             f"{paper['seconds'] / m['seconds']:.1f}x" if paper else "",
             f"{max(r['peak_mb'] for r in runs[c]):,.0f}", f"{m['passes']:.0f}",
             f"{m['distance_left']:.3f}", f"{m['ssim']:.3f}", f"{m['violations']:.1%}"]
            for c, m in best.items()]
    print(tabulate(rows, headers=["configuration", "pairs", "s / blind spot", "vs fixed-fp32",
                                  "peak MB", "passes (median)", "distance left (median)",
                                  "SSIM to target (median)", "below p0 - delta (fp32)"]))


if __name__ == "__main__":
    main()
