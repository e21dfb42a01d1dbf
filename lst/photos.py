"""`photos`: real photographs of ImageNet classes that ship inside packages the tool installs.

No ImageNet images can be downloaded here, and none are needed for a first run: scikit-image
and matplotlib carry a few photographs under open licences. `PHOTOS` lists those whose content
is an ImageNet class and that the offline ImageNet model of the registry
(`tf_efficientnet_lite0-normal`, models/MODEL_CARD.md) classifies correctly, one per class;
`EXCLUDED` lists the photographs that were checked and left out, and why. A label is never
one the model disagrees with (tests/test_photos.py checks every label against the model).

Items are ((3,224,224) float32 in [0,1], ImageNet class index), resized and centre-cropped by
the model's `DataConfig` (for the registry's ImageNet models: shorter side to 256, crop 224).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torch.utils.data import Dataset


@dataclass(frozen=True)
class Photo:
    """One photograph: where it ships, its ImageNet class, what it shows and its licence.

    package / file: the installed package and the path inside it; label: ImageNet class index
    (torchvision's order); shows: what the picture is; source and licence as the shipping
    package states them.
    """

    name: str
    package: str
    file: str
    label: int
    shows: str
    source: str
    licence: str

    def path(self) -> Path:
        """The photograph's file; `lst.data.DataError` naming the package when it is not
        installed (this module is imported by lst.data, so it imports lst.data late)."""
        from .data import DataError

        try:
            return Path(str(resources.files(self.package).joinpath(self.file)))
        except ModuleNotFoundError:
            raise DataError(f"photo {self.name} ships in the package {self.package}, which is "
                             "not installed: pip install -r requirements.txt") from None


PHOTOS = (
    Photo("chelsea", "skimage.data", "chelsea.png", 282, "a striped tabby cat (tiger cat)",
          "scikit-image, skimage.data.chelsea; photograph by Stefan van der Walt",
          "CC0 (no copyright restrictions)"),
    Photo("coffee", "skimage.data", "coffee.png", 967, "a cup of espresso on a saucer",
          "scikit-image, skimage.data.coffee; photograph by Rachel Michetti",
          "CC0 (no copyright restrictions)"),
    Photo("camera", "skimage.data", "camera.png", 872,
          "a photographer at a camera on a tripod (grayscale, given to the model as RGB)",
          "scikit-image, skimage.data.camera; photograph by Lav Varshney",
          "CC0 (no copyright restrictions)"),
    Photo("rocket", "skimage.data", "rocket.jpg", 657,
          "a Falcon 9 rocket on its launch pad (ImageNet's class for rockets is 'missile')",
          "scikit-image, skimage.data.rocket; SpaceX's launch photo of DSCOVR",
          "public domain (released by SpaceX)"),
    Photo("motorcycle", "skimage.data", "motorcycle_left.png", 665,
          "a red motorcycle in a workshop (ImageNet has no motorcycle class; its nearest are "
          "'moped' and 'motor scooter')",
          "scikit-image, skimage.data.stereo_motorcycle (left view); Middlebury 2014 stereo "
          "dataset, Scharstein et al., GCPR 2014",
          "research use, cite Scharstein et al. 2014 (as scikit-image redistributes it)"),
)

# Checked and left out: (package, file, why).
EXCLUDED = (
    ("skimage.data", "astronaut.png", "an astronaut in a spacesuit: no ImageNet class; the "
                                      "model says 'football helmet' (0.16)"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
     "Grace Hopper in naval uniform (ImageNet 'military uniform', 652); the model says "
     "'academic gown' (0.24) before 'mortarboard'"),
    ("skimage.data", "motorcycle_right.png", "the same scene as motorcycle_left.png from 19 cm "
                                             "to the side: one photograph per class"),
    ("skimage.data", "clock_motion.png", "a motion-blurred clock; the model says 'bubble'"),
    ("matplotlib", "mpl-data/sample_data/logo2.png", "matplotlib's logo, not a photograph"),
)


class PhotosDataset(Dataset):
    """The photographs of `PHOTOS`: items ((C,H,W) float32 in [0,1], ImageNet class), through
    `transform` (a PIL image -> tensor, e.g. `DataConfig.transform()`), read as RGB.
    `targets` holds the labels, `photos` the records, in the same order."""

    def __init__(self, transform, photos: tuple[Photo, ...] = PHOTOS) -> None:
        from .data import read_image

        self.photos = photos
        self.targets = [p.label for p in photos]
        self.images = [read_image(p.path()) for p in photos]  # five small files: read once
        self.transform = transform

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.targets[index]
