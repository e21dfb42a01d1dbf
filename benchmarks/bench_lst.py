"""Cost of one LST step against a bare forward+backward of the same model on the same batch.

    python benchmarks/bench_lst.py                  # CPU, CIFAR-size and ImageNet-size models
    python benchmarks/bench_lst.py --device cuda    # on a GPU, with larger batches
    python benchmarks/bench_lst.py --precision bf16 --models resnet20-cifar --batch_sizes 100

The LST step cost is the slope of the traversal's wall time in the number of iterations
(time(1 + k iterations) - time(1 iteration)) / k, so start-up work is not counted; each repeat
measures the bare forward+backward (median of 3) right beside it, and the reported ratio is the
median of the per-repeat ratios. The target (docs/design.md, "The fused step") is LST step /
bare forward+backward <= 1.10. It also prints the throughput of path widths and hull
evaluation in images per second. Models have random weights: speed does not depend on them. With --precision bf16/fp16 the bare forward+backward runs in that precision
too (autocast, channels-last inputs for convolutional models, as LST runs it), and the table
adds the float32 LST step and its ratio to the step in that precision.
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
from lst.precision import autocast, model_input  # noqa: E402
from models.architectures import ResNet20  # noqa: E402


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
    elif name == "resnet20-cifar":
        model, shape = ResNet20(num_classes=10), (3, 32, 32)
    else:
        model, shape = torchvision.models.resnet50(num_classes=1000), (3, 224, 224)
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, shape


def bench(name, batch, device, iters, repeats, precision):
    model, shape = build(name, device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=g).to(device)
    t = torch.rand(batch, *shape, generator=g).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)

    def bare():
        xg = x.clone().requires_grad_(True)
        with autocast(precision, device):
            logits = model(model_input(model, xg, precision))
        torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xg)

    def traverse(k, arithmetic):
        return lambda: lst.level_set_traversal(model, x, y, t, iters=k, adv_step_size=2e-3,
                                               pthresh=0.2, step_size=1e-2, precision=arithmetic)

    def step(arithmetic):
        return (timed(traverse(1 + iters, arithmetic), device, 1)
                - timed(traverse(1, arithmetic), device, 1)) / iters

    bare(), traverse(1, precision)(), traverse(1, "fp32")()  # warm-up
    # paired measurements, median of the per-repeat ratios: robust to a machine's slow drifts
    ratios, bare_times, step_times, fp32_ratios, fp32_times = [], [], [], [], []
    for _ in range(repeats):
        t_bare = timed(bare, device, 3)
        t_step = step(precision)
        bare_times.append(t_bare)
        step_times.append(t_step)
        ratios.append(t_step / t_bare)
        if precision != "fp32":
            t_fp32 = step("fp32")
            fp32_times.append(t_fp32)
            fp32_ratios.append(t_fp32 / t_step)
    t_bare, t_step = statistics.median(bare_times), statistics.median(step_times)

    points = x[:2]
    n_dirs, dists = 64, (0.5, 1.0, 1.5, 2.0)
    t_widths = timed(lambda: lst.path_widths(model, points, t[:2] - points, y[:2], dists,
                                             num_directions=n_dirs, precision=precision),
                     device, 1)
    t_hull = timed(lambda: lst.hull_confidences(model, x[:2], t[:2], t.flip(0)[:2], y[:2],
                                                chunk_size=batch * 4, precision=precision),
                   device, 1)
    row = [name, batch, precision, f"{t_bare * 1e3:.1f}", f"{t_step * 1e3:.1f}",
           f"{statistics.median(ratios):.3f}"]
    if precision != "fp32":
        row += [f"{statistics.median(fp32_times) * 1e3:.1f}", f"{statistics.median(fp32_ratios):.2f}"]
    return row + [f"{2 * n_dirs * len(dists) / t_widths:.0f}", f"{2 * 66 / t_hull:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["resnet18-cifar", "resnet50-imagenet"],
                        help="resnet18-cifar, resnet20-cifar, resnet50-imagenet")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=None,
                        help="one per model (default: 64 4 on CPU, 256 64 on CUDA)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--iters", type=int, default=10, help="iterations in the timed slope")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = args.batch_sizes or ([256, 64] if device.type == "cuda" else [64, 4])
    torch.manual_seed(0)
    rows = [bench(m, b, device, args.iters, args.repeats, args.precision)
            for m, b in zip(args.models, batches)]
    headers = ["model", "batch", "precision", "fwd+bwd ms", "LST step ms", "step / fwd+bwd"]
    if args.precision != "fp32":
        headers += ["fp32 step ms", "fp32 step / step"]
    print(tabulate(rows, headers=headers + ["widths img/s", "hull img/s"]))


if __name__ == "__main__":
    main()
