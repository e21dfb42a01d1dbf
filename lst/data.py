"""The datasets (one `DatasetInfo` record each, in DATASETS) and the choice of sources and
targets of both modes (docs/design.md, "Modes").

Datasets yield ((C,H,W) float32 in [0,1], int label); the model does its own normalisation.
  imagenet: torchvision's ImageNet layout (root with the devkit archive or meta.bin, and val/),
            or a plain folder of class folders named by WordNet id (root/val/<wnid>/ or
            root/<wnid>/), sorted = ImageNet label order.
  cifar10:  torchvision's CIFAR-10 (root/cifar-10-batches-py; downloaded when missing and
            online), or a folder tree root/test/<class>/ with the ten class folders, sorted =
            CIFAR-10 label order.
  shapes:   synthetic, generated in memory from the seed (lst.shapes).
Adding a dataset means adding a loader and its record to DATASETS; the command line, the model
registry and the figures read everything else from the record.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from .batching import chunks
from .confidence import predict
from .shapes import SHAPE_CLASSES, ShapesDataset


class DataError(ValueError):
    """A dataset that cannot be had or used; the message is one line meant for the user."""


@dataclass(frozen=True)
class DataConfig:
    """How a model wants its images: input size and the resize/crop that produces it.

    input_size: (C,H,W). crop_pct: the image is resized to H / crop_pct, then centre-cropped to
    H (timm's convention; 0.875 = resize 256, crop 224); None means the images already have the
    right size (CIFAR-10, shapes). interpolation: "bilinear" or "bicubic".
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float | None = 0.875
    interpolation: str = "bilinear"

    def transform(self) -> T.Compose:
        """The torchvision transform from a PIL image to a (C,H,W) tensor in [0,1]."""
        steps = []
        if self.crop_pct is not None:
            size = self.input_size[1]
            mode = T.InterpolationMode(self.interpolation)
            steps += [T.Resize(int(size / self.crop_pct), interpolation=mode), T.CenterCrop(size)]
        return T.Compose(steps + [T.ToTensor()])


def read_rgb(path: str | Path) -> Image.Image:
    """An image file as an RGB PIL image; DataError naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
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
                                             loader=read_rgb)
    for folder in (root / "val", root):
        if folder.is_dir():
            wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
            if wnids and all(w.startswith("n") and w[1:].isdigit() for w in wnids):
                if len(wnids) != 1000:
                    raise DataError(f"{folder} has {len(wnids)} class folders, ImageNet has 1000: "
                                    f"{expected}")
                # empty class folders are allowed: labels stay aligned with the 1000 wnids
                dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform,
                                                           loader=read_rgb, allow_empty=True)
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
                                                    loader=read_rgb)
        except FileNotFoundError as err:
            raise DataError(f"{folder}: {str(err).split('. ')[0]}: {expected}") from None
    try:
        return torchvision.datasets.CIFAR10(str(root), train=split == "train", transform=T.ToTensor(),
                                            download=download)
    except Exception as err:  # missing and offline, or a malformed archive
        raise DataError(f"CIFAR-10 not found under {root} and it could not be downloaded "
                        f"({type(err).__name__}): {expected}") from None


def _load_imagenet(root: Path, config: DataConfig | None, split: str, seed: int) -> Dataset:
    return load_imagenet(root, config or DataConfig())


def _load_cifar10(root: Path, config: DataConfig | None, split: str, seed: int) -> Dataset:
    return load_cifar10(root, split=split)


def _load_shapes(root: Path | None, config: DataConfig | None, split: str, seed: int) -> Dataset:
    return ShapesDataset(split=split, seed=seed)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the tool knows about one dataset.

    class_names: in label order. image_shape: (C,H,W) of its images (ImageNet: the default; the
    model's DataConfig decides). default_targets: the --examples classes when none are given.
    path_flag: the command-line flag of its folder (None: generated in memory); layout: what that
    folder must hold, for messages. load(root, config, split, seed) -> Dataset.
    needs_model_config: its resize and crop come from the model, so it is loaded after the model.
    """

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    default_targets: tuple[int, ...]
    path_flag: str | None
    layout: str
    load: Callable[[Path | None, DataConfig | None, str, int], Dataset]
    needs_model_config: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


IMAGENET_CLASSES = tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])

DATASETS = {info.name: info for info in (
    DatasetInfo("imagenet", IMAGENET_CLASSES, (3, 224, 224), (99, 199, 299, 400, 499),
                "--imgnet_path", "val/<wnid>/ images", _load_imagenet, needs_model_config=True),
    DatasetInfo("cifar10", CIFAR10_CLASSES, (3, 32, 32), (0, 1, 2, 3, 4), "--cifar_path",
                "torchvision's files or test/<class>/ images", _load_cifar10),
    DatasetInfo("shapes", SHAPE_CLASSES, (3, 32, 32), (0, 1, 2, 3, 4), None,
                "generated in memory", _load_shapes),
)}


def dataset_info(name: str) -> DatasetInfo:
    """The record of dataset `name`; DataError naming the known ones otherwise."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def check_root(name: str, root: str | Path | None) -> DatasetInfo:
    """The record of dataset `name`; DataError if it needs a folder and `root` is None."""
    info = dataset_info(name)
    if info.path_flag is not None and root is None:
        raise DataError(f"{name} needs its folder: pass {info.path_flag} DIR ({info.layout})")
    return info


def load_dataset(name: str, *, root: str | Path | None = None, config: DataConfig | None = None,
                 split: str = "test", seed: int = 0) -> Dataset:
    """The `split` of dataset `name` (a key of DATASETS). Raises DataError on bad input.

    root: the dataset's folder (imagenet, cifar10); config: the model's DataConfig (imagenet);
    seed: generation seed (shapes).
    """
    info = check_root(name, root)
    return info.load(None if root is None else Path(root), config, split, seed)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The label of every item, without loading images: (len,) int64."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    return np.asarray(dataset.targets, dtype=np.int64)


def stack_items(dataset: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n,C,H,W) and labels (n,) of the items at `indices`."""
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _confident(model: nn.Module, dataset: Dataset, candidates: Sequence[int],
               min_confidence: float, batch_size: int) -> np.ndarray:
    """Mask over `candidates`: correctly classified with confidence > min_confidence."""
    ok = np.zeros(len(candidates), dtype=bool)
    for part in chunks(len(candidates), batch_size):
        images, labels = stack_items(dataset, candidates[part])
        predicted, conf = predict(model, images)
        ok[part] = ((predicted.cpu() == labels) & (conf.cpu() > min_confidence)).numpy()
    return ok


def select_targets(model: nn.Module, dataset: Dataset, classes: Sequence[int], *,
                   min_confidence: float = 0.6, batch_size: int = 64) -> list[int]:
    """For each class, the index of its first image the model gets right with conf > threshold.

    Raises DataError for a class out of range or one with no such image.
    """
    labels = dataset_labels(dataset)
    num_classes = int(labels.max()) + 1
    chosen = []
    for cls in classes:
        if not 0 <= cls < num_classes:
            raise DataError(f"class {cls} is out of range: this dataset has classes 0..{num_classes - 1}")
        candidates = np.flatnonzero(labels == cls)
        found = None
        for part in chunks(len(candidates), batch_size):
            ok = _confident(model, dataset, candidates[part], min_confidence, batch_size)
            if ok.any():
                found = int(candidates[part][np.argmax(ok)])
                break
        if found is None:
            raise DataError(f"no image of class {cls} is classified correctly with confidence "
                            f"> {min_confidence}")
        chosen.append(found)
    return chosen


def balanced_allocation(capacity: Sequence[float], total: int) -> list[int]:
    """Split `total` over classes as evenly as their capacities allow (water-filling).

    Equal shares first; what a class cannot take goes to the others; a remainder goes to the
    lowest class indices. Returns one count per class, summing to min(total, sum(capacity)).
    """
    alloc = [0] * len(capacity)
    remaining = total
    active = [c for c, cap in enumerate(capacity) if cap > 0]
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        for c in active:
            give = int(min(share, capacity[c] - alloc[c], remaining))
            alloc[c] += give
            remaining -= give
        active = [c for c in active if alloc[c] < capacity[c]]
    return alloc


def select_sources(model: nn.Module, dataset: Dataset, num_samples: int, *, seed: int = 0,
                   min_confidence: float = 0.6, batch_size: int = 256) -> np.ndarray:
    """`num_samples` indices of images classified correctly with conf > threshold, class-spread.

    Each class's images are visited in an order shuffled from `seed`; each class contributes its
    first qualifying images, as evenly over classes as they allow (`balanced_allocation`). The
    result, interleaved class by class, depends on the seed and the data only, not on the batch
    size. Raises DataError when the split is too small or too few images qualify.
    """
    labels = dataset_labels(dataset)
    if num_samples > len(labels):
        raise DataError(f"asked for {num_samples} samples but the split has {len(labels)} images")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    order = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    found: list[list[int]] = [[] for _ in classes]
    visited = [0] * len(classes)
    while True:
        capacity = [len(found[c]) if visited[c] == len(order[c]) else np.inf
                    for c in range(len(classes))]
        alloc = balanced_allocation(capacity, num_samples)
        todo = [c for c in range(len(classes)) if len(found[c]) < alloc[c]]
        if not todo:
            break
        per_class = max(1, batch_size // len(todo))
        candidates = []
        for c in todo:
            want = min(per_class, alloc[c] - len(found[c]))
            candidates.append(order[c][visited[c]:visited[c] + want])
            visited[c] += len(candidates[-1])
        flat = np.concatenate(candidates)
        ok = _confident(model, dataset, flat, min_confidence, batch_size)
        for c, part in zip(todo, np.split(ok, np.cumsum([len(x) for x in candidates])[:-1])):
            found[c].extend(order[c][visited[c] - len(part):visited[c]][part].tolist())
    if sum(alloc) < num_samples:
        raise DataError(f"only {sum(alloc)} images are classified correctly with confidence "
                        f"> {min_confidence}; asked for {num_samples}")
    ranked = sorted((rank, c, idx) for c in range(len(classes))
                    for rank, idx in enumerate(found[c][:alloc[c]]))
    return np.array([idx for _, _, idx in ranked])


def assign_targets(labels: np.ndarray, rounds: int, seed: int = 0) -> np.ndarray:
    """For each source and round, the position (in the same pool) of a target of another class.

    labels: (n,) classes of the pool. Returns (n, rounds) int64. Each entry is drawn from a stream
    seeded by (seed, source position, round), so it does not depend on how work is split.
    """
    labels = np.asarray(labels)
    n = len(labels)
    out = np.empty((n, rounds), dtype=np.int64)
    for i in range(n):
        others = np.flatnonzero(labels != labels[i])
        if len(others) == 0:
            raise DataError("every source has the same class: no target of another class")
        for r in range(rounds):
            out[i, r] = others[np.random.default_rng([seed, i, r]).integers(len(others))]
    return out


def random_classes(num_classes: int, count: int, seed: int = 0) -> list[int]:
    """`count` distinct valid classes drawn from `seed` (--random_target_classes)."""
    if not 0 < count <= num_classes:
        raise DataError(f"cannot draw {count} distinct classes out of {num_classes}")
    return sorted(np.random.default_rng(seed).choice(num_classes, count, replace=False).tolist())
