import numpy as np
import torch

from lst.shapes import SHAPE_CLASSES, ShapesDataset


def test_shapes_are_reproducible_balanced_and_in_range():
    a = ShapesDataset("test", seed=3, size=200)
    b = ShapesDataset("test", seed=3, size=200)
    c = ShapesDataset("test", seed=4, size=200)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (200, 3, 32, 32) and a.images.dtype == torch.uint8
    assert np.bincount(a.targets).tolist() == [20] * 10
    x, y = a[13]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y == 3
    assert len(SHAPE_CLASSES) == 10 and len(set(SHAPE_CLASSES)) == 10


def test_train_and_test_splits_differ():
    train = ShapesDataset("train", seed=0, size=50)
    test = ShapesDataset("test", seed=0, size=50)
    assert not torch.equal(train.images, test.images)


def test_each_image_shows_a_shape_on_a_background():
    ds = ShapesDataset("test", seed=0, size=100)
    img = ds.images.float() / 255
    # foreground and background differ clearly: large spread of colours in every image
    spread = (img.flatten(2).amax(2) - img.flatten(2).amin(2)).amax(1)
    assert (spread > 0.3).all()
