"""The paper's full_eval size on one machine: wall time and peak memory of each step.

    python benchmarks/bench_scale.py                      # 1,000 sources x 5 rounds (5,000 pairs)
    python benchmarks/bench_scale.py --num_samples 100    # a quicker look

The paper's full_eval is 1,000 ImageNet sources x 5 targets at 224x224 with --get_final_imgs. Here
the images are a synthetic `folder` dataset of 224x224 JPEGs (one colour per class, with noise)
and the model is a TorchScript file that costs almost nothing (it scores the mean colour), so
what grows with the run's size is what the tool stores and loads, not the model. Each step runs
the command line as a child process, and its peak resident memory is that child's own
(`os.wait4`'s ru_maxrss):

  run            the whole full_eval (--iters 2 --get_final_imgs --batch_size 100)
  resume         a second run killed (SIGKILL) once ~90% of its pairs are saved, then resumed
  already done   the first run's command again
  print_tables   print_tables.py on the output folder
  report         print_tables.py --html

The table gives seconds, peak MB and MB per 1,000 pairs. Name the CPU (lscpu) beside the figures.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
SIZE = 224


class MeanColour(nn.Module):
    """(N,3,H,W) in [0,1] -> (N,K) logits: -gain * squared distance of the image's mean colour to
    each class colour. Confident on the images `write_images` makes; costs one mean a pass."""

    def __init__(self, colours: torch.Tensor, gain: float = 60.0) -> None:
        super().__init__()
        self.register_buffer("colours", colours)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3))
        return -self.gain * ((mean[:, None, :] - self.colours[None]) ** 2).sum(-1)


def class_colours() -> torch.Tensor:
    """K distinct colours (K, 3), corners and faces of the RGB cube, away from its edges."""
    grid = [(r, g, b) for r in (0.2, 0.8) for g in (0.2, 0.8) for b in (0.2, 0.8)]
    return torch.tensor(grid + [(0.5, 0.5, 0.2), (0.5, 0.2, 0.5)])[:CLASSES]


def write_images(root: Path, count: int) -> None:
    """`count` 224x224 JPEGs, class k % K in root/class_k/, its colour plus uniform noise."""
    rng = np.random.default_rng(0)
    colours = class_colours().numpy()
    for k in range(count):
        label = k % CLASSES
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.uniform(-0.15, 0.15, (SIZE, SIZE, 3))
        pixels = np.clip((colours[label] + noise) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:05d}.jpg", quality=90)


def measured(argv: list[str], kill_when=None) -> tuple[float, float, int]:
    """Run `argv` as a child; (seconds, peak resident MB of that child, exit status). With
    `kill_when` (a function polled every 50 ms), SIGKILL the child once it returns True."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if kill_when is not None:
        while proc.poll() is None and not kill_when():
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    error = proc.stderr.read().strip().splitlines()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): "
                         f"{error[-1] if error else ''}")
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--workdir", default=None, help="keep the images and runs here (default: a "
                                                    "temporary folder, removed at the end)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        images = work / "images"
        if not images.is_dir():
            clock = time.perf_counter()
            write_images(images, args.num_samples + args.num_samples // 10)
            print(f"wrote {args.num_samples + args.num_samples // 10} images of {SIZE}x{SIZE} in "
                  f"{time.perf_counter() - clock:.0f} s", flush=True)
        model = work / "mean_colour.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(MeanColour(class_colours())), model)
        run = [sys.executable, str(ROOT / "level_set_traversal.py"), str(model), "folder",
               "--data_path", str(images), "--full_eval", "--num_samples", str(args.num_samples),
               "--rounds", str(args.rounds), "--iters", str(args.iters), "--batch_size",
               str(args.batch_size), "--get_final_imgs", "--quiet", "--device", "cpu"]
        first, second = work / "run", work / "killed"
        pairs = args.num_samples * args.rounds
        rows = []

        def row(step: str, seconds: float, peak: float) -> None:
            rows.append([step, f"{seconds:.1f}", f"{peak:.0f}", f"{peak / pairs * 1000:.0f}"])
            print(f"{step}: {seconds:.1f} s, peak {peak:.0f} MB", flush=True)

        row("run", *measured(run + ["--out_dir", str(first)])[:2])
        parts_needed = int(0.9 * pairs / args.batch_size)

        def ninety_percent_saved() -> bool:
            return len(list(second.glob("*_parts/pairs_*.pkl"))) >= parts_needed

        seconds, peak, status = measured(run + ["--out_dir", str(second)], ninety_percent_saved)
        if status != -signal.SIGKILL:
            raise SystemExit("the second run finished before it could be killed")
        row("resume (after SIGKILL at 90%)", *measured(run + ["--out_dir", str(second)])[:2])
        row("already done", *measured(run + ["--out_dir", str(first)])[:2])
        tables = [sys.executable, str(ROOT / "print_tables.py"), str(first)]
        row("print_tables", *measured(tables)[:2])
        row("print_tables --html", *measured(tables + ["--html"])[:2])
    print(f"\n{args.num_samples} sources x {args.rounds} rounds = {pairs} pairs of {SIZE}x{SIZE} "
          f"images, --iters {args.iters}, --batch_size {args.batch_size}, --get_final_imgs")
    print(tabulate(rows, headers=["step", "seconds", "peak MB", "MB per 1,000 pairs"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
