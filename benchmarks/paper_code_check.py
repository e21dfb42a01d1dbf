"""This tool against the paper's own code, run from a local clone of the authors' repository:
the same walks (trajectories and blind spots) and the same Table 2 values.

    git clone https://github.com/SriramB-98/blindspots-geometry DIR && git -C DIR checkout 76b1cfa
    python benchmarks/paper_code_check.py --paper_repo DIR [--cifar_path CIFAR] [--threads 2]

Nothing is downloaded, and no line of the authors' code is in this repository: their
`level_set_traversal.py` and `eval_utils.py` are loaded from DIR at run time, with stand-ins
for the imports the two functions compared do not use (lpips, robustbench, and grad-cam and
robustness where missing; lpips would fetch weights). Without --paper_repo it says so in one line and exits 0.

For each model (the shipped shapes SmallCNN; with --cifar_path also the CIFAR-10 ResNet-20s),
`--pairs` sources walk towards targets of another class with the paper's hyperparameters:
  walks      the authors' `batch_level_set_traversal` and `lst.level_set_traversal`, fed the
             same initial noise (their `torch.rand_like` returns this tool's per-pair draws):
             the largest gap in source-class confidence over every iterate, and the largest
             pixel gap between the blind spots (median and maximum over pairs). Rounding
             differs (this tool rescales the gradient before projecting), and the walk itself
             magnifies rounding (the clamped adversarial term follows the sign of gradient
             entries near zero), so the same gaps are given for this tool against itself
             started one ulp away ("1 ulp"): the scale of a rounding difference.
  triangles  the authors' `get_avg_conf` on (source, blind spot a, blind spot b) against
             `lst.hull.hull_stats` over the paper's 64 grid points, on the same float images.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lst  # noqa: E402
from lst.batching import sample_generator  # noqa: E402
from lst.data import load_dataset, stack_items  # noqa: E402
from lst.hull import hull_confidences, hull_stats, paper_grid_points  # noqa: E402
from lst.sampling import assign_targets, select_sources  # noqa: E402
from models import load_model  # noqa: E402

PAPER = dict(step_size=1e-2, pthresh=0.2, adv_step_size=2e-3)
PAPER_COMMIT = "76b1cfa"


def stand_in(name: str, **attrs) -> None:
    """An empty module under `name` (with `attrs`)."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def load_paper_code(repo: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The authors' level_set_traversal.py and eval_utils.py from `repo`, as modules."""
    class Unused:
        def __init__(self, *args, **kwargs):
            pass

        def to(self, *args):
            return self

    stand_in("lpips", LPIPS=Unused)  # never the real one: it downloads AlexNet's weights
    stand_in("robustbench", load_model=None)  # the models come from this tool's registry
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        stand_in("pytorch_grad_cam", **{k: Unused for k in (
            "GradCAM", "ScoreCAM", "GradCAMPlusPlus", "AblationCAM", "XGradCAM", "EigenCAM")})
        stand_in("pytorch_grad_cam.utils")
        stand_in("pytorch_grad_cam.utils.image", show_cam_on_image=None)
    if importlib.util.find_spec("robustness") is None:
        stand_in("robustness")
    sys.path.insert(0, str(repo))
    try:
        modules = []
        for file in ("eval_utils.py", "level_set_traversal.py"):
            spec = importlib.util.spec_from_file_location(f"paper_{Path(file).stem}", repo / file)
            module = importlib.util.module_from_spec(spec)
            with contextlib.redirect_stdout(io.StringIO()):
                spec.loader.exec_module(module)
            modules.append(module)
    finally:
        sys.path.remove(str(repo))
    return modules[1], modules[0]


def uniform_draws(shape, seed: int, sample_ids) -> torch.Tensor:
    """The U(0,1) draws behind `lst.traversal.initial_noise` (stream "init_noise" per pair)."""
    return torch.stack([torch.rand(tuple(shape), generator=sample_generator(seed, k, "init_noise"))
                        for k in sample_ids])


def paper_walk(paper, model, sources, labels, targets, target_labels, iters: int) -> dict:
    """The authors' walk, with this tool's noise draws in place of their torch.rand_like."""
    paper.args = argparse.Namespace(adv_pert=True, adv_step_size=PAPER["adv_step_size"],
                                    width_distances=[])
    draws = uniform_draws(sources.shape[1:], 0, range(len(sources)))
    real = torch.rand_like
    torch.rand_like = lambda t, *a, **k: draws.to(t.device, t.dtype)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return paper.batch_level_set_traversal(
                model, lambda x: x, sources, labels, targets, target_labels, PAPER["step_size"],
                iters, torch.device("cpu"), pthresh=PAPER["pthresh"], get_confs_over_path=True,
                get_final_imgs=True, log_step=1)
    finally:
        torch.rand_like = real


def compare(name: str, model, dataset, pairs: int, iters: int, paper, paper_eval) -> list:
    pool = select_sources(model, dataset, pairs, seed=0)
    labels_all = lst.data.dataset_labels(dataset)[pool]
    targets = pool[assign_targets(labels_all, 2, seed=0)]  # two targets a source: a triangle
    sources, labels = stack_items(dataset, pool)
    firsts, first_labels = stack_items(dataset, targets[:, 0])
    walk = dict(iters=iters, log_step=1, get_confs_over_path=True, target_labels=first_labels,
                sample_ids=list(range(pairs)), **PAPER)
    ours = lst.level_set_traversal(model, sources, labels, firsts, **walk)
    theirs = paper_walk(paper, model, sources, labels, firsts, first_labels, iters)
    # the walk's own sensitivity to rounding: this tool again from sources one ulp away
    nudged = lst.level_set_traversal(model, torch.nextafter(sources, torch.ones_like(sources)),
                                     labels, firsts, **walk)
    gaps = []
    for other_path, other_images in ((theirs["confs_over_path"], theirs["final_images"]),
                                     (nudged.confs_over_path[:, :, 0], nudged.final_images)):
        image_gap = (ours.final_images - other_images).flatten(1).abs().amax(dim=1)
        gaps += [float((ours.confs_over_path[:, :, 0] - other_path).abs().max()),
                 float(image_gap.median()), float(image_gap.max())]
    # triangles: the authors' get_avg_conf and ours on the same float images (their blind spots
    # towards each source's two targets, walked by their code)
    seconds, second_labels = stack_items(dataset, targets[:, 1])
    other = paper_walk(paper, model, sources, labels, seconds, second_labels, iters)
    theirs_stats, ours_stats = [], []
    for k in range(pairs):
        images = [sources[k], theirs["final_images"][k], other["final_images"][k]]
        with contextlib.redirect_stdout(io.StringIO()):
            p_src, mean, fracs, edge_min, edge_mean = paper_eval.get_avg_conf(
                model, lambda x: x, images, int(labels[k]))
        theirs_stats.append([p_src, mean, *fracs, edge_mean, edge_min])
        confs = hull_confidences(model, sources[k:k + 1], theirs["final_images"][k:k + 1],
                                 other["final_images"][k:k + 1], labels[k:k + 1])
        stats = hull_stats(confs, points=paper_grid_points())
        ours_stats.append([stats[key][0] for key in ("p_src", "mean", "frac_above_0",
                           "frac_above_0.1", "frac_above_0.2", "frac_above_0.3", "edge_mean",
                           "edge_min")])
    table2_gap = np.abs(np.array(theirs_stats) - np.array(ours_stats)).max(axis=0)
    left = float(ours.distance_left.median())  # the walks did move
    return [name, pairs, iters, left, *gaps, float(table2_gap[[0, 1, 6, 7]].max()),
            float(table2_gap[2:6].max())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paper_repo", default=None, help="a local clone of the authors' repository")
    p.add_argument("--cifar_path", default=None, help="also the CIFAR-10 ResNet-20s")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.paper_repo is None:
        print("paper_code_check: skipped, no --paper_repo (a local clone of the authors' code)")
        return 0
    repo = Path(args.paper_repo)
    if not (repo / "level_set_traversal.py").is_file():
        print(f"error: {repo} holds no level_set_traversal.py", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown (no git)"
    print(f"the authors' code: {repo} at commit {head} (the paper's final code is {PAPER_COMMIT})")
    paper, paper_eval = load_paper_code(repo)
    models = [("smallcnn-normal", "shapes", None)]
    if args.cifar_path:
        models += [("resnet20-normal", "cifar10", args.cifar_path),
                   ("resnet20-linf", "cifar10", args.cifar_path)]
    rows = []
    for name, data, root in models:
        model, _ = load_model(name, data)
        rows.append(compare(name, model, load_dataset(data, root=root), args.pairs, args.iters,
                            paper, paper_eval))
    print(tabulate(rows, floatfmt=".1e", headers=[
        "model", "pairs", "iters", "distance left (median)", "authors: conf. gap (max)",
        "image gap (median)", "(max)", "1 ulp: conf. gap (max)", "image gap (median)", "(max)",
        "Table 2 gap (p_src, mean, edges)", "(fractions)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
