"""Level Set Traversal: find the blind spots of an image classifier (command line).

    python level_set_traversal.py smallcnn-normal shapes --examples
    python level_set_traversal.py resnet50-normal imagenet --full_eval --imgnet_path DIR \\
        --step_size 1e-2 --iters 400 --pthresh 0.2 --adv_pert --adv_step_size 2e-3 \\
        --log_step 20 --width_distances 0.5 1 1.5 2 --batch_size 196 --get_final_imgs
    python level_set_traversal.py my_model.pt folder --data_path DIR --examples \\
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225

This file only parses and dispatches; the work is in `lst` and `models`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from lst.data import (DATASETS, DataError, check_root, dataset_info, dataset_label,
                      examples_prefix, folder_image_size, load_dataset)
from lst.metrics import alexnet_weights_path
from lst.precision import AS_ASKED, resolve_precision
from lst.progress import set_quiet
from lst.results import ResultsError, WriteError
from lst.identity import file_digest, loaded_key, run_key
from lst.runstore import RunStore
from lst.sampling import MIN_CONFIDENCE, PROTOCOLS, random_classes
from lst.settings import PRESETS
from lst.traversal import LSTSettings


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr (exit 2)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `LSTSettings` field, with the field's name, default and help."""
    defaults = LSTSettings()
    group = parser.add_argument_group("LST settings (lst.LSTSettings)")
    for f in fields(LSTSettings):
        default, help_text = getattr(defaults, f.name), f.metadata["help"]
        if "switch" in f.metadata:  # an optional term: a switch flag and its value
            group.add_argument(f"--{f.metadata['switch']}", action="store_true",
                               help=f.metadata["switch_help"])
            group.add_argument(f"--{f.name}", type=float, default=f.metadata["switch_default"],
                               help=help_text)
        elif isinstance(default, bool):  # on by default: --no-NAME turns it off
            group.add_argument(f"--{f.name}", default=default, help=help_text, action=(
                argparse.BooleanOptionalAction if default else "store_true"))
        elif isinstance(default, tuple):
            group.add_argument(f"--{f.name}", type=f.metadata.get("item_type") or type(default[0]),
                               nargs="+", default=list(default), help=help_text)
        else:
            group.add_argument(f"--{f.name}", type=type(default), default=default, help=help_text,
                               choices=f.metadata.get("choices"))


def lst_settings(args: argparse.Namespace) -> LSTSettings:
    """The LSTSettings of the parsed flags, field by field (a switched-off term is None)."""
    values = {f.name: getattr(args, f.name) for f in fields(LSTSettings)}
    checked = LSTSettings(**values)  # a switch's value is checked even while it is off
    for f in fields(LSTSettings):
        if "switch" in f.metadata and not getattr(args, f.metadata["switch"]):
            values[f.name] = None
    return replace(checked, **values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description="Level Set Traversal: blind spots of image classifiers.")
    p.add_argument("model", help="a registry name (ARCH-TYPE, e.g. resnet50-normal, wideresnet-linf, "
                                 "smallcnn-normal), a TorchScript file, or package.module:callable")
    p.add_argument("dataset", help="imagenet, cifar10, photos (real photographs of ImageNet "
                                   "classes, shipped), shapes, or folder (--data_path DIR)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--examples", action="store_true", help="all pairs of one image per class")
    mode.add_argument("--full_eval", action="store_true", help="many sources, Tables 1 and 2")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="defaults for the LST settings: paper (the paper's hyperparameters: "
                        "--step_size 1e-2 --iters 400 --pthresh 0.2 --adv_pert --adv_step_size "
                        "2e-3) or fast (the same with --schedule adaptive --precision auto); "
                        "flags given explicitly win. photos defaults to --preset fast "
                        "--min_confidence 0 --log_step 5 --get_images (lst.photos)")
    add_settings_flags(p)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=0,
                   help="full_eval: processes that read and decode the images (a torch "
                        "DataLoader's workers; 0: the main process)")
    p.add_argument("--num_samples", type=int, default=1000, help="full_eval sources")
    p.add_argument("--rounds", type=int, default=5, help="full_eval targets per source")
    p.add_argument("--protocol", choices=PROTOCOLS, default="ours",
                   help="full_eval: ours (--num_samples sources spread over the classes, targets "
                        "of other classes), paper (the paper's final code: the example images "
                        "of --target_classes are the pool of sources, and each of --rounds "
                        "rounds is a random derangement of that pool; --num_samples is not used) "
                        "or pairs (the same pool, every ordered pair of it with --rounds = pool "
                        "size - 1: for a pool too small to sample from, such as photos)")
    p.add_argument("--min_confidence", type=float, default=MIN_CONFIDENCE, metavar="P",
                   help="an example image (and a full_eval source) is an image the model "
                        "classifies correctly with a confidence above P (default: the paper's "
                        f"{MIN_CONFIDENCE}; photos needs less, README)")
    p.add_argument("--get_final_imgs", action="store_true", help="full_eval: images and Table 2")
    p.add_argument("--restarts", type=int, default=1, metavar="K",
                   help="K walks per (source, target), each from its own initial noise (walk 0 "
                        "is the one a run without restarts does, and fills Tables 1-3); Table 4 "
                        "of print_tables.py compares them (with --diversity: pushed apart)")
    p.add_argument("--target_classes", nargs="+", default=None, metavar="CLASS",
                   help="examples classes (and the pool of --protocol paper or pairs), by index "
                        "or name, or 'all' (default: the dataset's, 99 199 299 400 499 on "
                        "ImageNet, the 5 photos' classes on photos, 0-4 on 10-class sets, a "
                        "folder's first 5)")
    p.add_argument("--random_target_classes", action="store_true",
                   help="draw as many random classes as --target_classes has, from --seed")
    p.add_argument("--transfer_models", nargs="+", default=[], metavar="MODEL",
                   help="other models of the dataset (names, files or callables) that also judge "
                        "every blind spot and raw target (Table 3 of print_tables.py)")
    p.add_argument("--load_dict", action="store_true", help="redraw figures from the saved results")
    p.add_argument("--imgnet_path", default=None, help="ImageNet root (val/ or devkit layout)")
    p.add_argument("--cifar_path", default=None, help="CIFAR-10 root (torchvision or test/<class>/)")
    p.add_argument("--data_path", default=None, help="folder: DIR/<class name>/ images "
                   "(DIR/classes.txt, one class per line, fixes the order)")
    p.add_argument("--load_model_path", default=None,
                   help="weights: a local checkpoint of a registry name, or a state dict for "
                        "package.module:callable (read with weights_only=True)")
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                   help="per-channel mean of a file or callable model that expects normalised "
                        "inputs (also of such --transfer_models); the tool gives it (x - mean) / std")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="S",
                   help="per-channel std, with --mean")
    p.add_argument("--image_size", type=int, nargs="+", default=None, metavar="N",
                   help="H [W]: the input size of a file or callable model (default: the "
                        "dataset's size, or the one size of a folder's images)")
    p.add_argument("--model_dir", default=None, help="RobustBench model directory")
    p.add_argument("--desc", default="", help="prefix of the results file names")
    p.add_argument("--out_dir", default="plots_and_figures")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda; under torchrun each rank takes cuda:LOCAL_RANK")
    p.add_argument("--fresh", action="store_true",
                   help="full_eval: discard saved partial results instead of resuming")
    p.add_argument("--restart", action="store_true", help=argparse.SUPPRESS)  # --fresh, before
    p.add_argument("--overwrite", action="store_true",
                   help="recompute a run whose results file exists, and replace that file")
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (40 to 90 s to compile on a 2-core "
                        "CPU; then 1.4x (bf16) to 1.7x (fp32) faster forward+backward for the "
                        "fixed schedule's constant batch; not with --schedule adaptive, whose "
                        "shrinking batch recompiles)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars and no INFO logs (warnings, errors and the summary stay)")
    args = p.parse_args(argv)
    defaults = preset_defaults(args.preset, args.dataset)
    if defaults:  # parsed again: the preset's and the dataset's defaults, explicit flags on top
        p.set_defaults(**defaults)
        args = p.parse_args(argv)
    args.defaults_note = defaults_note(args.preset, args.dataset)
    return args


def dataset_defaults(dataset: str) -> dict:
    """The command line's defaults of a dataset (`lst.data.DatasetInfo.defaults`); {} for an
    unknown name (check_args reports it)."""
    return dict(DATASETS[dataset].defaults) if dataset in DATASETS else {}


def defaults_note(preset: str | None, dataset: str) -> str:
    """What the defaults of this run are, when a preset or the dataset sets them, e.g. 'the
    photos dataset's defaults: --preset fast --min_confidence 0 --log_step 5 --get_images';
    '' otherwise."""
    own = dataset_defaults(dataset)
    if not own:
        return f"--preset {preset}" if preset else ""
    flags = [f"--{k}" if v is True else f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}"
             for k, v in own.items() if not (k == "preset" and preset)]
    own_note = f"the {dataset} dataset's defaults: {' '.join(flags)}"
    return f"--preset {preset}, and {own_note}" if preset else own_note


def preset_defaults(preset: str | None, dataset: str) -> dict:
    """The flag defaults of --preset and of the dataset (`lst.data.DatasetInfo.defaults`; the
    named preset wins over the dataset's), as argparse destinations."""
    own = dataset_defaults(dataset)
    own_preset = own.pop("preset", None)
    preset = preset or own_preset
    values = {**PRESETS.get(preset, {}), **own}
    if values.get("adv_step_size") is not None:
        values["adv_pert"] = True
    return values


def data_root(args: argparse.Namespace) -> str | None:
    """The value of the dataset's path flag (--imgnet_path, --cifar_path, --data_path), None if
    it has none."""
    flag = dataset_info(args.dataset).path_flag
    return None if flag is None else getattr(args, flag.lstrip("-"))


def class_indices(values: list[str], names: tuple[str, ...], where: str) -> list[int]:
    """--target_classes as class indices: an integer is an index, anything else a class name."""
    indices = []
    for value in values:
        if value.lstrip("-").isdigit():
            indices.append(int(value))
        elif value in names:
            indices.append(names.index(value))
        else:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise DataError(f"{value!r} is not a class of {where} ({shown})")
    return indices


def check_preprocessing(args: argparse.Namespace) -> None:
    """--mean, --std and --image_size go with a model that can take them (a file or callable;
    `models.load_model` checks the values of --mean and --std against the model)."""
    from models import model_kind

    given = [f"--{n}" for n in ("mean", "std", "image_size") if getattr(args, n) is not None]
    for name in [args.model] + list(args.transfer_models):
        model_kind(name)  # a path that names no file: one line now
    if given and model_kind(args.model) == "name":
        raise DataError(f"{args.model} takes [0,1] images of its own size: {' and '.join(given)} "
                        "are for a TorchScript file or package.module:callable")
    if args.image_size is not None:
        if len(args.image_size) not in (1, 2) or min(args.image_size) <= 0:
            raise DataError(f"--image_size takes H or H W, positive, got {args.image_size}")
        args.image_size = [args.image_size[0], args.image_size[-1]]


def check_args(args: argparse.Namespace) -> LSTSettings:
    """Reject bad values before anything runs or is written (docs/design.md, "Bad input");
    fill in the dataset's default classes. Returns the LST settings of the flags."""
    root = data_root(args)
    info = check_root(args.dataset, root)  # a folder's classes: its folders, or classes.txt
    if args.restart:  # the old spelling of --fresh
        print("warning: --restart is deprecated and will be removed: use --fresh (it discards "
              "saved partial results; --restarts K walks each pair K times)", file=sys.stderr)
        args.fresh = True
    for name in ("batch_size", "num_samples", "rounds", "restarts"):  # the settings check theirs
        if getattr(args, name) <= 0:
            raise DataError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.num_workers < 0:
        raise DataError(f"--num_workers must be >= 0, got {args.num_workers}")
    args.precision, args.precision_reason = resolve_precision(args.precision, args.device)
    try:
        settings = lst_settings(args)
    except ValueError as err:  # its message starts with the field's name, the flag's name
        raise DataError(f"--{err}") from None
    if args.full_eval:
        from lst.experiments import full_eval_settings

        settings = full_eval_settings(settings, args.get_final_imgs)
    if args.compile and settings.schedule == "adaptive":
        print("warning: --compile with --schedule adaptive compiles the model again for every "
              "batch size as walks stop: 10 to 30 times slower end to end "
              "(benchmarks/bench_compile.py)", file=sys.stderr)
    if settings.diversity > 0 and args.restarts < 2:
        raise DataError("--diversity pushes the restarts of a pair apart: it needs --restarts >= 2")
    if args.full_eval and args.rounds < 2 and args.get_final_imgs:
        raise DataError("--get_final_imgs needs --rounds >= 2 (triangles need two blind spots)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {args.device} but this machine has no CUDA device; use --device cpu")
    if args.examples and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DataError("--examples runs in one process; start it without torchrun")
    check_preprocessing(args)
    where = root if args.dataset == "folder" else args.dataset
    args.target_classes = (list(info.default_targets) if args.target_classes is None else
                           list(range(info.num_classes)) if args.target_classes == ["all"] else
                           class_indices(args.target_classes, info.class_names, where))
    if args.random_target_classes:
        args.target_classes = random_classes(info.num_classes, len(args.target_classes), args.seed)
    bad = [c for c in args.target_classes if not 0 <= c < info.num_classes]
    if bad:
        raise DataError(f"class {bad[0]} is out of range: {where} has classes "
                        f"0..{info.num_classes - 1}")
    if info.path_flag is not None and info.needs_model_config and not args.load_dict \
            and not Path(root).is_dir():
        raise DataError(f"{args.dataset} path {root} does not exist: expected {info.layout}")
    if len(set(args.target_classes)) < len(args.target_classes):
        twice = sorted({c for c in args.target_classes if args.target_classes.count(c) > 1})
        raise DataError(f"--target_classes names class(es) {twice} more than once")
    if args.protocol != "ours" and not args.full_eval:
        raise DataError("--protocol chooses the sources and targets of --full_eval")
    if args.protocol != "ours" and len(args.target_classes) < 2:
        raise DataError(f"--protocol {args.protocol} needs at least 2 --target_classes: its pool "
                        "is their example images")
    if args.protocol == "pairs" and args.rounds > len(args.target_classes) - 1:
        raise DataError(f"--protocol pairs: a pool of {len(args.target_classes)} images has "
                        f"{len(args.target_classes) - 1} targets per source; --rounds "
                        f"{len(args.target_classes) - 1} is every ordered pair")
    if not 0 <= args.min_confidence < 1:
        raise DataError(f"--min_confidence must be in [0, 1), got {args.min_confidence}")
    if args.examples and len(args.target_classes) < 3:
        raise DataError("--examples needs at least 3 distinct --target_classes"
                        + (f" ({where} has {len(args.target_classes)} class(es) with images)"
                           if args.dataset == "folder" and len(args.target_classes) < 3 else ""))
    from models import model_name

    judges = [model_name(m) for m in args.transfer_models]
    if model_name(args.model) in judges or len(set(judges)) < len(judges):
        raise DataError("--transfer_models must name other models than the traversed one "
                        "(which always judges its own blind spots), each once")
    if args.load_dict and not args.examples:
        raise DataError("--load_dict redraws the figures of --examples; it does not go with "
                        "--full_eval")
    return settings


def run_identity(args: argparse.Namespace, settings: LSTSettings) -> dict:
    """The run key of these flags (`lst.identity.run_key`), before any model is loaded."""
    from models import local_weights_file, model_file_digest, model_kind, model_name

    root = data_root(args)
    own_judge = any(model_kind(m) != "name" for m in args.transfer_models)
    preprocessing = {n: getattr(args, n) for n in ("mean", "std", "image_size")
                     if getattr(args, n) is not None}
    return run_key(
        "examples" if args.examples else "full_eval", model_name(args.model),
        dataset_label(args.dataset, root), settings, classes=args.target_classes,
        num_samples=args.num_samples, rounds=args.rounds, get_final_imgs=args.get_final_imgs,
        protocol=args.protocol, restarts=args.restarts,
        judges=[model_name(m) for m in args.transfer_models],
        judge_weights_files=[None if f is None else file_digest(f) for f in
                             (local_weights_file(m, args.dataset) for m in args.transfer_models)],
        judge_model_files=([model_file_digest(m) for m in args.transfer_models]
                           if own_judge else None),
        data_root=root, weights_file=local_weights_file(args.model, args.dataset,
                                                        args.load_model_path),
        model_file=model_file_digest(args.model),
        preprocessing=preprocessing, lpips=alexnet_weights_path() is not None,
        min_confidence=args.min_confidence)


def results_flags(args: argparse.Namespace) -> dict:
    """The flags as a results file keeps them; a file or callable model's argument as given is
    `model_spec` (`model` is its name, `lst.identity.results_args`)."""
    from models import model_name

    flags = vars(args).copy()
    if model_name(args.model) != args.model:
        flags["model_spec"] = args.model
    return flags


def input_size_flag(args: argparse.Namespace) -> tuple[int, int] | None:
    """(H, W) for a file or callable model: --image_size, or on a folder its images' one size."""
    from models import model_kind

    if args.image_size is not None:
        return tuple(args.image_size)
    if args.dataset == "folder" and model_kind(args.model) != "name":
        return folder_image_size(data_root(args))
    return None


def check_fit(name: str, model, config, info, args: argparse.Namespace) -> None:
    """The model scores as many classes as the dataset (`info`, its record) has: one forward
    pass."""
    from models import num_outputs

    root = data_root(args)
    classes = info.num_classes
    outputs = num_outputs(model, config.input_size)
    if outputs == classes:
        return
    if args.dataset == "folder":
        raise DataError(f"{root} has {classes} classes but {name} has {outputs} outputs: name all "
                        f"{outputs} classes of the model, in its order, in {Path(root) / 'classes.txt'}")
    raise DataError(f"{args.dataset} has {classes} classes but {name} has {outputs} outputs")


def model_and_data(args: argparse.Namespace):
    """(model, dataset, transfer models by name) as the flags say."""
    from models import load_model, model_kind, model_name

    info = check_root(args.dataset, data_root(args))
    if not info.needs_model_config:  # check the data before loading (maybe big) weights
        dataset = load_dataset(args.dataset, root=data_root(args), seed=args.seed)
    size = input_size_flag(args)
    preprocessing = dict(mean=args.mean, std=args.std)
    model, config = load_model(args.model, args.dataset, checkpoint=args.load_model_path,
                               model_dir=args.model_dir, device=args.device, image_size=size,
                               **preprocessing)
    check_fit(args.model, model, config, info, args)
    if info.needs_model_config:  # the resize and crop come from the model's config
        dataset = load_dataset(args.dataset, root=data_root(args), config=config)
    shape = tuple(dataset[0][0].shape)
    if shape != tuple(config.input_size):
        raise DataError(f"the images of {args.dataset} are {shape}; {args.model} takes "
                        f"{tuple(config.input_size)}")
    transfer_models = {}
    for name in args.transfer_models:
        own = model_kind(name) != "name"
        judge, other = load_model(name, args.dataset, model_dir=args.model_dir, device=args.device,
                                  image_size=config.input_size[1:] if own else None,
                                  **(preprocessing if own else {}))
        if other.input_size != config.input_size:
            raise DataError(f"--transfer_models {name} takes {other.input_size} images; the "
                            f"blind spots of {args.model} are {config.input_size}")
        check_fit(name, judge, config, info, args)
        transfer_models[model_name(name)] = judge
    if args.get_layers or args.layers:  # names that are not modules of the model: one line now
        from lst.layers import resolve_layers
        try:
            resolve_layers(model, args.layers)
        except ValueError as err:
            raise DataError(f"--layers: {err}") from None
    if args.compile:  # same weights, fused kernels: results differ only by float rounding
        model = torch.compile(model)
    return model, dataset, transfer_models


class Interrupted(Exception):
    """Ctrl-C during a run; the message says what is saved."""


def examples_command(args: argparse.Namespace, settings: LSTSettings) -> str:
    from lst.experiments import example_image_digests, run_examples
    from lst.plots import plot_examples

    key = run_identity(args, settings)
    prefix = examples_prefix(args.dataset, data_root(args))
    store = RunStore.for_run(args.out_dir, key, desc=args.desc)
    names = check_root(args.dataset, data_root(args)).class_names
    if args.load_dict:
        results = store.read("examples_dict")
        figures = plot_examples(results, [names[c] for c in results["classes"]], store.out_dir,
                                store.stem, settings.width_distances)
        return f"redrew {len(figures)} figures from {store.path('examples_dict')} in {store.out_dir}/"
    try:
        with store.open():
            model, dataset, transfer_models = model_and_data(args)
            key = loaded_key(key, model, transfer_models, example_image_digests(
                store.out_dir, prefix, args.target_classes))
            if not args.overwrite and store.finished("examples_dict", key):
                return (f"already done: {store.path('examples_dict')} holds this run "
                        "(--load_dict redraws its figures, --overwrite recomputes it)")
            results = run_examples(model, dataset, args.target_classes, settings,
                                   out_dir=store.out_dir,
                                   dataset_name=prefix,
                                   batch_size=args.batch_size, transfer_models=transfer_models,
                                   store=store, run_key=key, flags=results_flags(args),
                                   restarts=args.restarts, min_confidence=args.min_confidence)
            figures = plot_examples(results, [names[c] for c in results["classes"]],
                                    store.out_dir, store.stem, settings.width_distances)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: no results file was written; rerun the same command "
                          "to run it") from None
    k = len(results["classes"])
    off = ~np.eye(k, dtype=bool)
    return (f"examples: {k * (k - 1)} pairs, mean source confidence {results['init_confs'].mean():.3f}"
            f" -> {results['final_confs'][off].mean():.3f} at the blind spots, mean SSIM to target "
            f"{np.nanmean(results['ssim'][off]):.3f}{schedule_note(results, settings, off)}"
            f"{precision_note(results, settings, args.precision_reason)}; "
            f"{store.path('examples_dict')} and {len(figures)} figures in {store.out_dir}/")


def full_eval_command(args: argparse.Namespace, settings: LSTSettings) -> str | None:
    from lst import distributed
    from lst.experiments import run_full_eval

    rank = distributed.setup(args.device)
    if not rank.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    args.device = str(rank.device)
    key = run_identity(args, settings)
    store = RunStore.for_run(args.out_dir, key, desc=args.desc, rank=rank)
    try:
        with store.open(restart=args.fresh):
            model, dataset, transfer_models = model_and_data(args)
            key = loaded_key(key, model, transfer_models)
            if args.protocol != "ours":
                dataset, digests = example_pool(model, dataset, args, store.out_dir, rank)
                key = loaded_key(key, model, example_images=digests)
            done, error = None, None
            if rank.is_main:
                try:
                    done = not args.overwrite and store.finished("fulleval_dict", key)
                except ResultsError as err:
                    error = err
            done, error = distributed.broadcast((done, error))
            if error is not None:
                raise error
            if done:
                return (f"already done: {store.path('fulleval_dict')} holds this run "
                        "(--overwrite recomputes it)") if rank.is_main else None
            results, all_confs = run_full_eval(
                model, dataset, settings, num_samples=args.num_samples, rounds=args.rounds,
                batch_size=args.batch_size, get_final_imgs=args.get_final_imgs, store=store,
                rank=rank, transfer_models=transfer_models, run_key=key, flags=results_flags(args),
                restarts=args.restarts, protocol=args.protocol, num_workers=args.num_workers,
                min_confidence=args.min_confidence)
            if not rank.is_main:
                return None
            written = [store.path("fulleval_dict")] + ([] if all_confs is None
                                                       else [store.path("all_confs")])
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {saved_pairs(store)}; the same command resumes") from None
    except WriteError as err:
        raise WriteError(f"{err}; {saved_pairs(store)} and the same command resumes") from None
    finally:
        distributed.teardown()
    return (f"full_eval: {results['final_confs'].size} pairs on {rank.world_size} process(es), "
            f"mean final confidence {np.nanmean(results['final_confs']):.3f}, mean L2 "
            f"{np.nanmean(results['l2']):.3f}, mean SSIM {np.nanmean(results['ssim']):.3f}"
            f"{schedule_note(results, settings)}"
            f"{precision_note(results, settings, args.precision_reason)}; wrote "
            f"{', '.join(map(str, written))}")


def example_pool(model, dataset, args: argparse.Namespace, out_dir: Path, rank):
    """--protocol paper or pairs: the example images of --target_classes in out_dir (made as
    --examples makes them where missing, by rank 0) as a dataset, items (image, class) in class
    order, and their content hashes (for the run key, as for an examples run)."""
    from torch.utils.data import TensorDataset

    from lst import distributed
    from lst.experiments import example_image_digests, example_targets

    prefix = examples_prefix(args.dataset, data_root(args))
    made = (example_targets(model, dataset, args.target_classes, out_dir, prefix,
                            args.min_confidence) if rank.is_main else None)
    distributed.barrier()  # the other ranks read the images rank 0 made
    images, classes, _ = made or example_targets(model, dataset, args.target_classes, out_dir,
                                                 prefix, args.min_confidence)
    return (TensorDataset(images, classes),
            example_image_digests(out_dir, prefix, args.target_classes))


def schedule_note(results: dict, settings: LSTSettings, pairs: np.ndarray | None = None) -> str:
    """Under the adaptive schedule: the model passes the walks took, against the fixed budget
    (over the walked pairs among `pairs`, a mask of results' shape; default all)."""
    if settings.schedule == "fixed":
        return ""
    kept = results["kept"] if pairs is None else results["kept"] & pairs
    return (f", adaptive schedule: {np.mean(results['passes'][kept]):.0f} passes a pair "
            f"(at most {settings.iters + 1}), distance left "
            f"{np.median(results['distance_left'][kept]):.3f} (median)")


def precision_note(results: dict, settings: LSTSettings, reason: str) -> str:
    """The arithmetic and why (`lst.precision.resolve_precision`); how many walks the float32
    check stepped back into the level set (`lst.guard`: bf16/fp16, 8-bit blind spots), when
    any; and any blind spot below p0 - pthresh in float32 (none, by the check)."""
    note = "" if settings.precision == "fp32" and reason == AS_ASKED else (
        f"; {settings.precision} ({reason})")
    if settings.precision != "fp32":
        note += ", every blind spot checked in float32"
    stepped, share = results.get("stepped_back_walks", 0), results["float32_violations"]
    if stepped:
        note += (f"; {stepped} walk(s) stepped back into the level set by the float32 check"
                 + (f" (margin {settings.acceptance_margin:g})" if settings.acceptance_margin
                    else ""))
    if share:
        note += f"; {share:.1%} of the pairs fall below p0 - pthresh in float32"
    return note


def saved_pairs(store: RunStore) -> str:
    """'N finished pairs are saved in DIR', for an interrupted or failed full_eval."""
    return f"{store.saved_pairs()} finished pairs are saved in {store.parts_dir}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "Animation.save using ..."
    set_quiet(args.quiet)
    # library deprecation notices (torch.jit via timm, pkg_resources via RobustBench) are not
    # the user's business
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    started = time.time()
    if args.defaults_note:
        logging.getLogger("lst").info("defaults: %s (flags given explicitly win)", args.defaults_note)
    from models import ModelError

    try:
        settings = check_args(args)
        command = examples_command if args.examples else full_eval_command
        summary = command(args, settings)
    except (DataError, ModelError, ResultsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a fault no check above foresaw: still one line
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as err:
        print(str(err) or "interrupted", file=sys.stderr)
        return 130
    if summary is not None:  # other ranks of a torchrun stay quiet
        print(f"{summary} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
