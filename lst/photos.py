"""`photos`: real photographs of ImageNet classes that ship inside packages the tool installs.

No ImageNet images can be downloaded here, and none are needed for a first run: scikit-image
and matplotlib carry a few photographs under open licences. `PHOTOS` lists those whose content
is an ImageNet class and that the offline ImageNet model of the registry
(`tf_efficientnet_lite0-normal`, models/MODEL_CARD.md) classifies correctly, one per class;
`EXCLUDED` lists the photographs that were checked and left out, and why. A label says what
the photograph shows, and the model gets each one right by a margin no resize filter flips:
top-1 minus top-2 confidence at least MIN_MARGIN under every interpolation `DataConfig` offers
(tests/test_photos.py checks every label and margin against the model).

Items are ((3,224,224) float32 in [0,1], ImageNet class index), resized and centre-cropped by
the model's `DataConfig` (for the registry's ImageNet models: shorter side to 256, crop 224),
or, without one, by CHECKED_UNDER: the model's own, under which the labels were chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torch.utils.data import Dataset


# The command line's defaults on photos (`lst.data.DatasetInfo.defaults`): one photograph a class
# leaves nothing for the paper's 0.6 rule to choose from (every photograph is right by
# MIN_MARGIN), the fast preset (the paper's delta and adversarial term, the adaptive schedule),
# and the path recorded every 5th step with its images for the figures and the explorer.
PHOTOS_DEFAULTS = (("preset", "fast"), ("min_confidence", 0.0), ("log_step", 5),
                   ("get_images", True))
MIN_MARGIN = 0.05  # top-1 minus top-2 confidence of the model on every photograph
# the preprocessing of tf_efficientnet_lite0 (timm's DataConfig): `DataConfig(**CHECKED_UNDER)`
CHECKED_UNDER = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")


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
    Photo("palace", "sklearn", "datasets/images/china.jpg", 698,
          "the Summer Palace in Beijing: a Chinese palace hall with a tiled roof among trees",
          "scikit-learn, sklearn.datasets.load_sample_image('china.jpg'); photograph by "
          "danielbuechele on Flickr (retrieved 2011 by Robert Layton)",
          "CC BY 2.0 (attribution: danielbuechele)"),
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
    ("skimage.data", "chelsea.png", "a striped tabby cat: the model is torn between 'tiger cat' "
                                    "(282) and 'Egyptian cat' (285), 0.393 against 0.356 resized "
                                    "bicubic and 0.377 against 0.377, the order flipped, "
                                    "bilinear: below the margin of MIN_MARGIN"),
    ("sklearn", "datasets/images/flower.jpg", "a pink dahlia-like flower: ImageNet has no such "
                                              "class; the model says 'daisy' (0.32), which it "
                                              "does not show"),
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
