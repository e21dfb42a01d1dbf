"""`shapes`: a 10-class synthetic set of 32x32 colour images of geometric shapes.

Each image is one shape of a random colour, size, position and rotation on a random background
(a colour with a gentle gradient) with a little pixel noise. Generated in memory from a seed: no
files, no network: a split is determined by (seed, split, size); image k has class k % 10.
Shapes are drawn at twice the resolution and averaged down, so edges are anti-aliased.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent",
                 "horizontal stripes", "vertical stripes", "checkerboard")
SIZE = 32
_SUPER = 2  # supersampling factor
# rotation range (degrees) per class: shapes whose identity depends on orientation turn little
_MAX_ROTATION = (180, 20, 180, 180, 20, 180, 180, 12, 12, 12)
SPLIT_SIZES = {"train": 20000, "test": 2000}


def _mask(cls: int, u: np.ndarray, v: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Inside-shape mask in the shape's own frame (u right, v up, radius 1). (n,H,W) bool."""
    r = np.hypot(u, v)
    if cls == 0:
        return r <= 1
    if cls == 1:
        return np.maximum(abs(u), abs(v)) <= 0.8
    if cls == 2:
        inside = np.ones_like(u, dtype=bool)
        for angle in (-90, 30, 150):
            a = np.deg2rad(angle)
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5
        return inside
    if cls == 3:
        phase = (np.arctan2(v, u) / (2 * np.pi) * 5 + 0.25) % 1.0
        spike = 1 - 2 * abs(phase - 0.5)  # 1 at the five points, 0 between them
        return r <= 0.38 + 0.62 * spike ** 1.5
    if cls == 4:
        return ((abs(u) <= 0.3) & (abs(v) <= 1)) | ((abs(v) <= 0.3) & (abs(u) <= 1))
    if cls == 5:
        return (r <= 1) & (r >= 0.55)
    if cls == 6:
        return (r <= 1) & (np.hypot(u - 0.5, v) > 0.8)
    patch = np.maximum(abs(u), abs(v)) <= 0.95
    stripe_v = np.floor(v / period) % 2 == 0
    stripe_u = np.floor(u / period) % 2 == 0
    if cls == 7:
        return patch & stripe_v
    if cls == 8:
        return patch & stripe_u
    return patch & (stripe_u ^ stripe_v)


def render_shapes(labels: np.ndarray, rng: np.random.Generator, chunk: int = 1000) -> np.ndarray:
    """Draw one image per label: (n,) ints in 0..9 -> (n,3,32,32) uint8."""
    n = len(labels)
    radius = rng.uniform(7.5, 13.0, n)
    center = rng.uniform(0, 1, (n, 2)) * (SIZE - 2 * radius[:, None]) + radius[:, None]
    max_rot = np.array(_MAX_ROTATION)[labels]
    angle = np.deg2rad(rng.uniform(-1, 1, n) * max_rot)
    period = rng.uniform(0.28, 0.4, n)
    background = rng.uniform(0, 1, (n, 3))
    foreground = rng.uniform(0, 1, (n, 3))
    for _ in range(100):  # enough colour contrast to see the shape at a glance
        low = np.linalg.norm(foreground - background, axis=1) < 0.6
        if not low.any():
            break
        foreground[low] = rng.uniform(0, 1, (int(low.sum()), 3))
    gradient_dir = rng.uniform(0, 2 * np.pi, n)
    gradient_amp = rng.uniform(0, 0.15, n)
    noise = rng.normal(0, 0.02, (n, 3, SIZE, SIZE))

    hi = SIZE * _SUPER
    coords = (np.arange(hi) + 0.5) / _SUPER
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    images = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        dx = (xs[None] - center[part, 0, None, None]) / radius[part, None, None]
        dy = -(ys[None] - center[part, 1, None, None]) / radius[part, None, None]
        c, s = np.cos(angle[part])[:, None, None], np.sin(angle[part])[:, None, None]
        u, v = c * dx + s * dy, -s * dx + c * dy
        mask = np.zeros(u.shape, dtype=np.float32)
        for cls in np.unique(labels[part]):
            sel = labels[part] == cls
            mask[sel] = _mask(int(cls), u[sel], v[sel], period[part][sel, None, None])
        mask = mask.reshape(-1, SIZE, _SUPER, SIZE, _SUPER).mean(axis=(2, 4))[:, None]
        gx = (xs[::_SUPER, ::_SUPER] / SIZE - 0.5)[None]
        gy = (ys[::_SUPER, ::_SUPER] / SIZE - 0.5)[None]
        ramp = (np.cos(gradient_dir[part])[:, None, None] * gx
                + np.sin(gradient_dir[part])[:, None, None] * gy) * gradient_amp[part, None, None]
        bg = background[part, :, None, None] + ramp[:, None]
        img = bg * (1 - mask) + foreground[part, :, None, None] * mask + noise[part]
        images[part] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return images


class ShapesDataset(Dataset):
    """The `shapes` split as a map-style dataset of ((3,32,32) float32 in [0,1], int label).

    split: "train" (20,000 images) or "test" (2,000); size overrides the count. Balanced classes:
    image k has class k % 10. Attributes: images (n,3,32,32) uint8, targets (list of int), classes.
    """

    classes = list(SHAPE_CLASSES)

    def __init__(self, split: str = "test", seed: int = 0, size: int | None = None) -> None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"shapes has splits {sorted(SPLIT_SIZES)}, not {split!r}")
        n = SPLIT_SIZES[split] if size is None else size
        labels = np.arange(n) % len(SHAPE_CLASSES)
        rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split)])
        self.images = torch.from_numpy(render_shapes(labels, rng))
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float() / 255, self.targets[index]
