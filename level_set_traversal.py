"""Level Set Traversal: find the blind spots of an image classifier (command line).

    python level_set_traversal.py smallcnn-normal shapes --examples
    python level_set_traversal.py resnet50-normal imagenet --full_eval --imgnet_path DIR \\
        --step_size 1e-2 --iters 400 --pthresh 0.2 --adv_pert --adv_step_size 2e-3 \\
        --log_step 20 --width_distances 0.5 1 1.5 2 --batch_size 196 --get_final_imgs

This file only parses and dispatches; the work is in `lst` and `models`.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lst.data import CIFAR10_CLASSES, NUM_CLASSES, DataError, load_dataset, random_classes
from lst.results import ResultsError, load_results, results_stem, save_results
from lst.shapes import SHAPE_CLASSES

DEFAULT_TARGETS = {"imagenet": [99, 199, 299, 400, 499]}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr (exit 2)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description="Level Set Traversal: blind spots of image classifiers.")
    p.add_argument("model", help="ARCH-TYPE, e.g. resnet50-normal, wideresnet-linf, smallcnn-normal")
    p.add_argument("dataset", help="imagenet, cifar10 or shapes")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--examples", action="store_true", help="all pairs of one image per class")
    mode.add_argument("--full_eval", action="store_true", help="many sources, Tables 1 and 2")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=0, help="(kept for the paper's commands)")
    p.add_argument("--step_size", type=float, default=5e-2, help="eta")
    p.add_argument("--iters", type=int, default=100, help="T")
    p.add_argument("--pthresh", type=float, default=0.05, help="delta, in (0, 1]")
    p.add_argument("--adv_pert", action="store_true", help="add the adversarial term")
    p.add_argument("--adv_step_size", type=float, default=1 / 255, help="eps (with --adv_pert)")
    p.add_argument("--init_noise", type=float, default=4 / 255, help="nu, uniform start noise width")
    p.add_argument("--log_step", type=int, default=10, help="record every L iterations")
    p.add_argument("--num_samples", type=int, default=1000, help="full_eval sources")
    p.add_argument("--rounds", type=int, default=5, help="full_eval targets per source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--get_widths", action="store_true")
    p.add_argument("--width_distances", type=float, nargs="+", default=[5, 10, 15, 20, 25, 30])
    p.add_argument("--width_directions", type=int, default=256)
    p.add_argument("--get_final_imgs", action="store_true", help="full_eval: images and Table 2")
    p.add_argument("--get_confs_over_path", action="store_true")
    p.add_argument("--get_images", action="store_true", help="record images along the path")
    p.add_argument("--target_classes", type=int, nargs="+", default=None,
                   help="examples classes (default 99 199 299 400 499; 0-4 on 10-class sets)")
    p.add_argument("--random_target_classes", action="store_true",
                   help="draw as many random classes as --target_classes has, from --seed")
    p.add_argument("--load_dict", action="store_true", help="redraw figures from the saved results")
    p.add_argument("--imgnet_path", default=None, help="ImageNet root (val/ or devkit layout)")
    p.add_argument("--cifar_path", default=None, help="CIFAR-10 root (torchvision or test/<class>/)")
    p.add_argument("--load_model_path", default=None, help="local checkpoint for the architecture")
    p.add_argument("--model_dir", default=None, help="RobustBench model directory")
    p.add_argument("--desc", default="", help="prefix of the results file names")
    p.add_argument("--out_dir", default="plots_and_figures")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda; under torchrun each rank takes cuda:LOCAL_RANK")
    p.add_argument("--restart", action="store_true",
                   help="full_eval: discard saved partial results instead of resuming")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """SPEC §10: reject bad values before anything runs or is written."""
    if args.dataset not in NUM_CLASSES:
        raise DataError(f"unknown dataset {args.dataset!r}; known: {', '.join(NUM_CLASSES)}")
    for name in ("step_size", "iters", "batch_size", "log_step", "num_samples", "rounds",
                 "width_directions"):
        if getattr(args, name) <= 0:
            raise DataError(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 < args.pthresh <= 1:
        raise DataError(f"--pthresh must be in (0, 1], got {args.pthresh}")
    if args.adv_pert and args.adv_step_size <= 0:
        raise DataError(f"--adv_step_size must be positive, got {args.adv_step_size}")
    if args.full_eval and args.rounds < 2 and args.get_final_imgs:
        raise DataError("--get_final_imgs needs --rounds >= 2 (triangles need two blind spots)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {args.device} but this machine has no CUDA device; use --device cpu")
    if args.examples and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DataError("--examples runs in one process; start it without torchrun")
    num_classes = NUM_CLASSES[args.dataset]
    if args.target_classes is None:
        args.target_classes = DEFAULT_TARGETS.get(args.dataset, [0, 1, 2, 3, 4])
    if args.random_target_classes:
        args.target_classes = random_classes(num_classes, len(args.target_classes), args.seed)
    bad = [c for c in args.target_classes if not 0 <= c < num_classes]
    if bad:
        raise DataError(f"class {bad[0]} is out of range: {args.dataset} has classes 0..{num_classes - 1}")
    if args.dataset == "imagenet" and args.imgnet_path is None:
        raise DataError("imagenet needs its folder: pass --imgnet_path DIR (val/<wnid>/ images)")
    if args.dataset == "imagenet" and not args.load_dict and not Path(args.imgnet_path).is_dir():
        raise DataError(f"ImageNet path {args.imgnet_path} does not exist: expected torchvision's "
                        "ImageNet layout or val/<wnid>/ folders")
    if args.dataset == "cifar10" and args.cifar_path is None:
        raise DataError("cifar10 needs its folder: pass --cifar_path DIR (torchvision's files or "
                        "test/<class>/ images)")
    if args.examples and len(set(args.target_classes)) < 3:
        raise DataError("--examples needs at least 3 distinct --target_classes")


def class_names(dataset: str) -> list[str]:
    if dataset == "shapes":
        return list(SHAPE_CLASSES)
    if dataset == "cifar10":
        return list(CIFAR10_CLASSES)
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def settings_from(args: argparse.Namespace):
    from lst.experiments import LSTSettings

    return LSTSettings(step_size=args.step_size, iters=args.iters, pthresh=args.pthresh,
                       adv_step_size=args.adv_step_size if args.adv_pert else None,
                       init_noise=args.init_noise, log_step=args.log_step,
                       get_confs_over_path=args.get_confs_over_path, get_images=args.get_images,
                       get_widths=args.get_widths, width_distances=args.width_distances,
                       width_directions=args.width_directions, seed=args.seed)


def stem_of(args: argparse.Namespace) -> str:
    return results_stem(desc=args.desc, model=args.model, dataset=args.dataset,
                        step_size=args.step_size, iters=args.iters,
                        adv_step_size=args.adv_step_size if args.adv_pert else None,
                        classes=args.target_classes if args.examples else None,
                        num_samples=args.num_samples)


def model_and_data(args: argparse.Namespace):
    from models import load_model

    if args.dataset != "imagenet":  # check the data before loading (maybe big) weights
        dataset = load_dataset(args.dataset, root=args.cifar_path, seed=args.seed)
    model, config = load_model(args.model, args.dataset, checkpoint=args.load_model_path,
                               model_dir=args.model_dir, device=args.device)
    if args.dataset == "imagenet":  # the resize and crop come from the model's config
        dataset = load_dataset(args.dataset, root=args.imgnet_path, config=config)
    return model, dataset


def run_examples(args: argparse.Namespace) -> str:
    from lst.experiments import run_examples as examples
    from lst.plots import plot_examples

    out_dir = Path(args.out_dir)
    stem = stem_of(args)
    path = out_dir / f"{stem}_examples_dict.pkl"
    if args.load_dict:
        results = load_results(path)["results"]
    else:
        model, dataset = model_and_data(args)
        results = examples(model, dataset, args.target_classes, settings_from(args),
                           out_dir=out_dir, dataset_name=args.dataset, batch_size=args.batch_size)
        save_results(path, vars(args), results)
    names = class_names(args.dataset)
    figures = plot_examples(results, [names[c] for c in results["classes"]], out_dir, stem,
                            args.width_distances)
    k = len(results["classes"])
    off = ~np.eye(k, dtype=bool)
    return (f"examples: {k * (k - 1)} pairs, mean source confidence {results['init_confs'].mean():.3f}"
            f" -> {results['final_confs'][off].mean():.3f} at the blind spots, mean SSIM to target "
            f"{np.nanmean(results['ssim'][off]):.3f}; {path} and {len(figures)} figures in {out_dir}/")


def run_full_eval(args: argparse.Namespace) -> str | None:
    from lst import distributed
    from lst.experiments import run_full_eval as full_eval

    rank = distributed.setup(args.device)
    if not rank.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    args.device = str(rank.device)
    out_dir = Path(args.out_dir)
    stem = stem_of(args)
    parts_dir = out_dir / f"{stem}_fulleval_parts"
    if args.restart and rank.is_main and parts_dir.exists():
        shutil.rmtree(parts_dir)
    distributed.barrier()
    try:
        model, dataset = model_and_data(args)
        results, all_confs = full_eval(
            model, dataset, settings_from(args), num_samples=args.num_samples, rounds=args.rounds,
            batch_size=args.batch_size, get_final_imgs=args.get_final_imgs, parts_dir=parts_dir,
            run_key={"model": args.model, "dataset": args.dataset,
                     "load_model_path": args.load_model_path}, rank=rank)
        if not rank.is_main:
            return None
        path = save_results(out_dir / f"{stem}_fulleval_dict.pkl", vars(args), results)
        written = [path]
        if all_confs is not None:
            written.append(save_results(out_dir / f"{stem}_all_confs.pkl", vars(args), all_confs))
        shutil.rmtree(parts_dir)
    finally:
        distributed.teardown()
    return (f"full_eval: {results['final_confs'].size} pairs on {rank.world_size} process(es), "
            f"mean final confidence {np.nanmean(results['final_confs']):.3f}, mean L2 "
            f"{np.nanmean(results['l2']):.3f}, mean SSIM {np.nanmean(results['ssim']):.3f}; "
            f"wrote {', '.join(map(str, written))}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # library deprecation notices (torch.jit via timm, pkg_resources via RobustBench) are not
    # the user's business
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = parse_args(argv)
    started = time.time()
    from models import ModelError

    try:
        check_args(args)
        summary = run_examples(args) if args.examples else run_full_eval(args)
    except (DataError, ModelError, ResultsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary is not None:  # other ranks of a torchrun stay quiet
        print(f"{summary} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
