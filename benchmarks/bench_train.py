"""Speed of one training step of `models.train` in float32 against --bf16 and --channels_last.

    python benchmarks/bench_train.py                 # resnet20, batch 128, CPU threads as set
    python benchmarks/bench_train.py --arch smallcnn --threads 2

One step is what `models.train` does per batch: forward, cross-entropy, backward, SGD update.
The four settings are timed in turn, `--rounds` times over (median per setting), so machine
noise hits them alike; the table gives ms per step and the speed-up over float32. bf16 pays off
on CPUs with AMX or AVX512-BF16 and on CUDA; elsewhere it can be slower.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.architectures import ARCHITECTURES  # noqa: E402

SETTINGS = [(False, False), (True, False), (False, True), (True, True)]  # (bf16, channels_last)


def step_time(arch: str, batch: int, bf16: bool, channels_last: bool, steps: int) -> float:
    """Seconds per training step after 3 warm-up steps; random data (speed does not depend on it)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = ARCHITECTURES[arch](num_classes=10).to(memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet20", choices=sorted(ARCHITECTURES))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    times = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for bf16, channels_last in SETTINGS:
            times[(bf16, channels_last)].append(step_time(args.arch, args.batch, bf16, channels_last,
                                                          args.steps))
    base = statistics.median(times[(False, False)])
    rows = [[bf16, channels_last, 1000 * statistics.median(t), base / statistics.median(t)]
            for (bf16, channels_last), t in times.items()]
    print(f"{args.arch}, batch {args.batch}, {torch.get_num_threads()} CPU threads")
    print(tabulate(rows, headers=["bf16", "channels_last", "ms / step", "speed-up"], floatfmt=".2f"))


if __name__ == "__main__":
    main()
