"""The datasets: one `DatasetInfo` record each in DATASETS, their loaders, and item access.

Datasets yield ((C,H,W) float32 in [0,1], int label); the model does its own normalisation.
  imagenet: torchvision's ImageNet layout (root with the devkit archive or meta.bin, and val/),
            or a plain folder of class folders named by WordNet id (root/val/<wnid>/ or
            root/<wnid>/), sorted = ImageNet label order.
  cifar10:  torchvision's CIFAR-10 (root/cifar-10-batches-py; downloaded when missing and
            online), or a folder tree root/test/<class>/ with the ten class folders, sorted =
            CIFAR-10 label order.
  photos:   real photographs of ImageNet classes shipped inside installed packages
            (scikit-image's data), one per class, labelled with ImageNet's 1000 classes
            (lst.photos); resized and centre-cropped as the model wants.
  shapes:   synthetic, generated in memory from the seed (lst.shapes).
  folder:   any images, root/<class name>/*, torchvision's ImageFolder convention (classes in
            sorted order, or in the order of root/classes.txt, which may name classes without a
            folder); any size and format Pillow reads, resized and centre-cropped to the model's
            input size, converted to its channels (RGB or grayscale).
Adding a dataset means adding a loader and its record to DATASETS; the command line, the model
registry and the figures read everything else from the record. Which images a run uses (sources,
targets) is `lst.sampling`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from .photos import CHECKED_UNDER, PHOTOS, PHOTOS_DEFAULTS, PhotosDataset
from .shapes import SHAPE_CLASSES, ShapesDataset


class DataError(ValueError):
    """A dataset that cannot be had or used; the message is one line meant for the user."""


@dataclass(frozen=True)
class DataConfig:
    """How a model wants its images: input size and the resize/crop that produces it.

    input_size: (C,H,W), C = 3 (RGB) or 1 (grayscale). crop_pct: the image is resized to
    H / crop_pct (shorter side; both sides for H != W, as timm does), then centre-cropped to
    (H,W) (timm's convention; 0.875 = resize 256, crop 224); None means the images already have
    the right size (CIFAR-10, shapes). interpolation: "bilinear" or "bicubic".
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float | None = 0.875
    interpolation: str = "bilinear"

    def transform(self) -> T.Compose:
        """The torchvision transform from a PIL image to a (C,H,W) tensor in [0,1]. An image that
        already has the size it would be resized to is not resampled."""
        steps = []
        if self.crop_pct is not None:
            height, width = self.input_size[1:]
            mode = T.InterpolationMode(self.interpolation)
            scaled = (int(height / self.crop_pct) if height == width else
                      (int(height / self.crop_pct), int(width / self.crop_pct)))
            steps += [T.Resize(scaled, interpolation=mode), T.CenterCrop((height, width))]
        return T.Compose(steps + [T.ToTensor()])


PIL_MODES = {3: "RGB", 1: "L"}  # channels -> the Pillow mode images are converted to


def read_image(path: str | Path, channels: int = 3) -> Image.Image:
    """An image file as a PIL image in RGB (channels 3) or grayscale (channels 1); DataError
    naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert(PIL_MODES[channels])
    except (OSError, ValueError) as err:  # missing, truncated, not an image
        raise DataError(f"cannot read image {path}: {err}") from None


def load_imagenet(root: str | Path, config: DataConfig) -> Dataset:
    """ImageNet validation images, torchvision layout or plain wnid folders (module docstring)."""
    root = Path(root).expanduser()
    expected = ("expected torchvision's ImageNet layout (ILSVRC2012_devkit_t12.tar.gz or meta.bin "
                "beside val/) or a folder of class folders named by WordNet id (root/val/n01440764/...)")
    if not root.is_dir():
        raise DataError(f"ImageNet path {root} does not exist: {expected}")
    transform = config.transform()
    if (root / "meta.bin").is_file() or (root / "ILSVRC2012_devkit_t12.tar.gz").is_file():
        return torchvision.datasets.ImageNet(str(root), split="val", transform=transform,
                                             loader=read_image)
    for folder in (root / "val", root):
        if folder.is_dir():
            wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
            if wnids and all(w.startswith("n") and w[1:].isdigit() for w in wnids):
                if len(wnids) != 1000:
                    raise DataError(f"{folder} has {len(wnids)} class folders, ImageNet has 1000: "
                                    f"{expected}")
                # empty class folders are allowed: labels stay aligned with the 1000 wnids
                dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform,
                                                           loader=read_image, allow_empty=True)
                if len(dataset) == 0:
                    raise DataError(f"{folder} has class folders but no images: {expected}")
                return dataset
    raise DataError(f"no ImageNet validation images under {root}: {expected}")


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def load_cifar10(root: str | Path, split: str = "test", download: bool = True) -> Dataset:
    """CIFAR-10 `split` ("test" or "train") from torchvision's files or a class-folder tree."""
    root = Path(root).expanduser()
    expected = ("expected torchvision's CIFAR-10 (cifar-10-batches-py/) or class folders "
                f"{split}/airplane/ ... {split}/truck/")
    if not root.is_dir():  # never let torchvision create it
        raise DataError(f"CIFAR-10 folder {root} does not exist: {expected}")
    folder = root / split
    if folder.is_dir():
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(classes) != 10:
            raise DataError(f"{folder} has {len(classes)} class folders, CIFAR-10 has 10: {expected}")
        try:
            return torchvision.datasets.ImageFolder(str(folder), transform=T.ToTensor(),
                                                    loader=read_image)
        except FileNotFoundError as err:
            raise DataError(f"{folder}: {str(err).split('. ')[0]}: {expected}") from None
    try:
        return torchvision.datasets.CIFAR10(str(root), train=split == "train", transform=T.ToTensor(),
                                            download=download)
    except Exception as err:  # missing and offline, or a malformed archive
        raise DataError(f"CIFAR-10 not found under {root} and it could not be downloaded "
                        f"({type(err).__name__}): {expected}") from None


CLASSES_FILE = "classes.txt"
FOLDER_LAYOUT = "DIR/<class name>/ image files, and optionally DIR/classes.txt (one class per line)"
# every file suffix Pillow can open (not only those it can save); hidden files are skipped
IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items()
                           if fmt in Image.OPEN)


def folder_classes(root: str | Path) -> tuple[str, ...]:
    """The class names of an image folder, in label order: the lines of root/classes.txt when
    it exists (it may name classes without a folder; every class folder must be named), else
    the class folders' names, sorted. DataError on an empty or inconsistent folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: expected {FOLDER_LAYOUT}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    listed = root / CLASSES_FILE
    if not listed.is_file():
        if not folders:
            raise DataError(f"{root} has no class folders: expected {FOLDER_LAYOUT}")
        return tuple(folders)
    try:
        names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {listed}: {err}") from None
    twice = sorted({n for n in names if names.count(n) > 1})
    if not names or twice:
        raise DataError(f"{listed} must name each class once, one per line"
                        + (f"; {twice[0]!r} comes more than once" if twice else ": it is empty"))
    unnamed = [f for f in folders if f not in set(names)]
    if unnamed:
        raise DataError(f"class folder {root / unnamed[0]} is not named in {listed}: add it, or "
                        "move the folder out")
    return tuple(names)


def is_image_file(path: str) -> bool:
    """Whether ImageFolder takes `path` as an image: a suffix Pillow opens, not a hidden file."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


class ClassFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder with the classes of `folder_classes` (classes.txt's order when
    there is one); classes without a folder have no images."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = list(folder_classes(directory))
        return classes, {name: label for label, name in enumerate(classes)}


def _folder_samples(root: Path) -> ClassFolder:
    """The folder's ImageFolder without a transform, checked: images exist, no class folder
    is empty, every image's header is readable (DataError naming the folder or file)."""
    dataset = ClassFolder(str(root), is_valid_file=is_image_file, allow_empty=True)
    if len(dataset) == 0:
        raise DataError(f"{root} holds no images (any format Pillow reads): expected {FOLDER_LAYOUT}")
    counts = np.bincount(dataset.targets, minlength=len(dataset.classes))
    empty = [c for c, n in zip(dataset.classes, counts) if n == 0 and (root / c).is_dir()]
    if empty:
        raise DataError(f"class folder {root / empty[0]} holds no images (any format Pillow reads)")
    return dataset


def image_sizes(paths: Sequence[str]) -> dict[tuple[int, int], str]:
    """Each distinct (H, W) among the image files and the first file that has it, reading only
    their headers; DataError naming the first file that Pillow cannot open."""
    sizes: dict[tuple[int, int], str] = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.setdefault((image.height, image.width), path)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image {path}: {err}") from None
    return sizes


def folder_image_size(root: str | Path) -> tuple[int, int]:
    """(H, W) of the folder's images when they all have one size; DataError otherwise (the
    model's input size must then be given, --image_size)."""
    root = Path(root).expanduser()
    sizes = image_sizes([path for path, _ in _folder_samples(root).samples])
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise DataError(f"the images of {root} have {len(sizes)} sizes ({a[0]}x{a[1]} {first}, "
                        f"{b[0]}x{b[1]} {second}, ...): pass --image_size H W, the model's input size")
    return next(iter(sizes))


def load_folder(root: str | Path, config: DataConfig) -> Dataset:
    """Every image of an image folder (module docstring), resized and centre-cropped to
    config.input_size (crop_pct None counts as 1: the largest centred crop) and converted to its
    channels. Every image's header is read once here, so a file Pillow cannot open is named
    before anything runs."""
    root = Path(root).expanduser()
    channels = config.input_size[0]
    if channels not in PIL_MODES:
        raise DataError(f"the model takes {channels}-channel images; a folder's images can be given "
                        "to models of 3 (RGB) or 1 (grayscale) channels")
    dataset = _folder_samples(root)
    image_sizes([path for path, _ in dataset.samples])
    dataset.transform = replace(config, crop_pct=config.crop_pct or 1.0).transform()
    dataset.loader = partial(read_image, channels=channels)
    return dataset


def dataset_label(name: str, root: str | Path | None) -> str:
    """The dataset's name in file names and tables: `name`, or for a folder its own name
    (letters, digits, '.', '-' and '+' kept, other characters as '-')."""
    if name != "folder" or root is None:
        return name
    base = Path(root).expanduser().resolve().name or "folder"
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", base)


def examples_prefix(name: str, root: str | Path | None) -> str:
    """The prefix of the saved example images, {prefix}_target_{class}.png: the dataset's name;
    for a folder its label and a short hash of its resolved path, so two folders of the same
    name never share example images."""
    if name != "folder" or root is None:
        return name
    where = str(Path(root).expanduser().resolve())
    return f"{dataset_label(name, root)}-{hashlib.sha256(where.encode()).hexdigest()[:6]}"


def _load_imagenet(root: Path, config: DataConfig | None, split: str, seed: int) -> Dataset:
    return load_imagenet(root, config or DataConfig())


def _load_cifar10(root: Path, config: DataConfig | None, split: str, seed: int) -> Dataset:
    return load_cifar10(root, split=split)


def _load_photos(root: Path | None, config: DataConfig | None, split: str, seed: int) -> Dataset:
    return PhotosDataset((config or DataConfig(**CHECKED_UNDER)).transform())


def _load_shapes(root: Path | None, config: DataConfig | None, split: str, seed: int) -> Dataset:
    return ShapesDataset(split=split, seed=seed)


def _load_folder(root: Path, config: DataConfig | None, split: str, seed: int) -> Dataset:
    if config is None:
        raise DataError("a folder's images are resized to the model's input size: load it with "
                        "the model's DataConfig")
    return load_folder(root, config)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the tool knows about one dataset.

    class_names: in label order (None: read from the folder, see `dataset_info`). image_shape:
    (C,H,W) of its images (ImageNet: the default; None: any size; the model's DataConfig
    decides). default_targets: the --examples classes when none are given. path_flag: the
    command-line flag of its folder (None: generated in memory); layout: what that folder must
    hold, for messages. load(root, config, split, seed) -> Dataset. needs_model_config: its
    resize and crop come from the model, so it is loaded after the model. defaults: the command
    line's defaults for it, where they differ from the paper's (a demonstration dataset: its
    --preset, and the --min_confidence rule of a set with one image per class); flags given
    explicitly win.
    """

    name: str
    class_names: tuple[str, ...] | None
    image_shape: tuple[int, int, int] | None
    default_targets: tuple[int, ...] | None
    path_flag: str | None
    layout: str
    load: Callable[[Path | None, DataConfig | None, str, int], Dataset]
    needs_model_config: bool = False
    defaults: tuple[tuple[str, object], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


IMAGENET_CLASSES = tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])

DATASETS = {info.name: info for info in (
    DatasetInfo("imagenet", IMAGENET_CLASSES, (3, 224, 224), (99, 199, 299, 400, 499),
                "--imgnet_path", "val/<wnid>/ images", _load_imagenet, needs_model_config=True),
    DatasetInfo("cifar10", CIFAR10_CLASSES, (3, 32, 32), (0, 1, 2, 3, 4), "--cifar_path",
                "torchvision's files or test/<class>/ images", _load_cifar10),
    DatasetInfo("photos", IMAGENET_CLASSES, (3, 224, 224), tuple(p.label for p in PHOTOS), None,
                "photographs shipped in installed packages (lst.photos)", _load_photos,
                needs_model_config=True, defaults=PHOTOS_DEFAULTS),
    DatasetInfo("shapes", SHAPE_CLASSES, (3, 32, 32), (0, 1, 2, 3, 4), None,
                "generated in memory", _load_shapes),
    DatasetInfo("folder", None, None, None, "--data_path", FOLDER_LAYOUT, _load_folder,
                needs_model_config=True),
)}


def dataset_info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """The record of dataset `name`; DataError naming the known ones otherwise. A folder's
    record with its `root` gets the folder's class names (`folder_classes`) and, as default
    example classes, the first five that have images."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    info = DATASETS[name]
    if info.class_names is None and root is not None:
        names = folder_classes(root)
        present = [c for c, n in enumerate(names) if (Path(root).expanduser() / n).is_dir()]
        info = replace(info, class_names=names, default_targets=tuple(present[:5]))
    return info


def check_root(name: str, root: str | Path | None) -> DatasetInfo:
    """The record of dataset `name` (with a folder's classes); DataError if it needs a folder
    and `root` is None."""
    info = dataset_info(name)
    if info.path_flag is not None and root is None:
        raise DataError(f"{name} needs its folder: pass {info.path_flag} DIR ({info.layout})")
    return dataset_info(name, root)


def load_dataset(name: str, *, root: str | Path | None = None, config: DataConfig | None = None,
                 split: str = "test", seed: int = 0) -> Dataset:
    """The `split` of dataset `name` (a key of DATASETS). Raises DataError on bad input.

    root: the dataset's folder (imagenet, cifar10, folder; photos and shapes have none);
    config: the model's DataConfig (imagenet, photos, folder); seed: generation seed (shapes).
    """
    info = check_root(name, root)
    return info.load(None if root is None else Path(root), config, split, seed)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The label of every item: (len,) int64. Read from `dataset.targets` (torchvision's
    datasets, Subsets of them) without loading images; any other dataset of (image, label) items
    is read item by item once."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets, dtype=np.int64)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def stack_items(dataset: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n,C,H,W) and labels (n,) of the items at `indices`."""
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
