"""Cost of one LST step against a bare forward+backward of the same model on the same batch.

    python benchmarks/bench_lst.py                  # CPU, CIFAR-size and ImageNet-size models
    python benchmarks/bench_lst.py --device cuda    # on a GPU, with larger batches

The LST step cost is the slope of the traversal's wall time in the number of iterations
(time(1 + k iterations) - time(1 iteration)) / k, so start-up work is not counted; each repeat
measures the bare forward+backward (median of 3) right beside it, and the reported ratio is the
median of the per-repeat ratios. The target
(docs/design.md, "The fused step") is LST step / bare forward+backward <= 1.10. It also prints the throughput of path
widths and hull evaluation in images per second. Models have random weights: speed does not
depend on them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lst  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name: str, device: torch.device) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    if name == "resnet18-cifar":
        model, shape = torchvision.models.resnet18(num_classes=10), (3, 32, 32)
    else:
        model, shape = torchvision.models.resnet50(num_classes=1000), (3, 224, 224)
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, shape


def bench(name, batch, device, iters, repeats):
    model, shape = build(name, device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=g).to(device)
    t = torch.rand(batch, *shape, generator=g).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)

    def bare():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    def traverse(k):
        return lambda: lst.level_set_traversal(model, x, y, t, iters=k, adv_step_size=2e-3,
                                               pthresh=0.2, step_size=1e-2)

    bare(), traverse(1)()  # warm-up
    # paired measurements, median of the per-repeat ratios: robust to a machine's slow drifts
    ratios, bare_times, step_times = [], [], []
    for _ in range(repeats):
        t_bare = timed(bare, device, 3)
        t_step = (timed(traverse(1 + iters), device, 1) - timed(traverse(1), device, 1)) / iters
        bare_times.append(t_bare)
        step_times.append(t_step)
        ratios.append(t_step / t_bare)
    t_bare, t_step = statistics.median(bare_times), statistics.median(step_times)

    points = x[:2]
    n_dirs, dists = 64, (0.5, 1.0, 1.5, 2.0)
    t_widths = timed(lambda: lst.path_widths(model, points, t[:2] - points, y[:2], dists,
                                             num_directions=n_dirs, chunk_size=batch * 4),
                     device, 1)
    t_hull = timed(lambda: lst.hull_confidences(model, x[:2], t[:2], t.flip(0)[:2], y[:2],
                                                chunk_size=batch * 4), device, 1)
    return [name, batch, f"{t_bare * 1e3:.1f}", f"{t_step * 1e3:.1f}", f"{statistics.median(ratios):.3f}",
            f"{2 * n_dirs * len(dists) / t_widths:.0f}", f"{2 * 66 / t_hull:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["resnet18-cifar", "resnet50-imagenet"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=None,
                        help="one per model (default: 64 4 on CPU, 256 64 on CUDA)")
    parser.add_argument("--iters", type=int, default=10, help="iterations in the timed slope")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = args.batch_sizes or ([256, 64] if device.type == "cuda" else [64, 4])
    torch.manual_seed(0)
    rows = [bench(m, b, device, args.iters, args.repeats) for m, b in zip(args.models, batches)]
    print(tabulate(rows, headers=["model", "batch", "fwd+bwd ms", "LST step ms",
                                  "step / fwd+bwd", "widths img/s", "hull img/s"]))


if __name__ == "__main__":
    main()
