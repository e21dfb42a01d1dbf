from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lst.data import DataConfig, DataError, dataset_labels, load_dataset
from lst.sampling import (assign_targets, derangement_targets, every_pair_targets,
                          random_classes, select_sources, select_targets)
from lst.shapes import ShapesDataset

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def write_tree(root: Path, classes, per_class, size=(32, 32), ext="png"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{k:04d}.{ext}")


def test_cifar_folder_tree_in_label_order(tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    write_tree(tmp_path / "test", classes[::-1], 2)
    ds = load_dataset("cifar10", root=tmp_path)
    assert len(ds) == 20 and ds.classes == classes
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0 and 0 <= x.min() and x.max() <= 1
    assert dataset_labels(ds).tolist() == [c for c in range(10) for _ in range(2)]


def test_cifar_missing_or_malformed_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path / "nowhere")
    write_tree(tmp_path / "test", ["a", "b"], 1)
    with pytest.raises(DataError, match="has 2 class folders"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="--cifar_path"):
        load_dataset("cifar10")


def test_imagenet_plain_wnid_folders_with_the_models_preprocessing(tmp_path):
    wnids = [f"n{k:08d}" for k in range(1000)]
    for w in wnids:
        (tmp_path / "val" / w).mkdir(parents=True)
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "val" / wnids[0] / "a.JPEG")
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "val" / wnids[7] / "b.JPEG")
    ds = load_dataset("imagenet", root=tmp_path, config=DataConfig((3, 224, 224), 0.875, "bicubic"))
    assert len(ds) == 2
    x, y = ds[1]
    assert x.shape == (3, 224, 224) and y == 7


def test_imagenet_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagenet", root=tmp_path / "nope")
    (tmp_path / "val" / "n00000001").mkdir(parents=True)
    with pytest.raises(DataError, match="has 1 class folders"):
        load_dataset("imagenet", root=tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("mnist")


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 images not present")
def test_shared_cifar10_test_split():
    ds = load_dataset("cifar10", root=SHARED_CIFAR)
    assert len(ds) == 10000
    assert np.bincount(dataset_labels(ds)).tolist() == [1000] * 10
    x, y = ds[5000]
    assert x.shape == (3, 32, 32) and y == 5


class Oracle(nn.Module):
    """Predicts a fixed label per image (stored in the red channel's first pixel)."""

    def __init__(self, confidence_logit=5.0):
        super().__init__()
        self.logit = confidence_logit
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 255).round().long() % 10
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), label] = self.logit
        return logits


class Tagged(torch.utils.data.Dataset):
    """Images whose first pixel encodes what the Oracle will predict."""

    def __init__(self, labels, predicted):
        self.targets = list(labels)
        self.predicted = list(predicted)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = torch.zeros(3, 4, 4)
        x[0, 0, 0] = self.predicted[i] / 255
        return x, self.targets[i]


def test_select_targets_takes_the_first_confident_correct_image():
    labels = [0, 1, 1, 2, 1, 2]
    predicted = [0, 2, 1, 2, 1, 2]  # item 1 is wrong; item 2 is the first right "1"
    ds = Tagged(labels, predicted)
    assert select_targets(Oracle(), ds, [1, 2, 0], batch_size=2) == [2, 3, 0]
    with pytest.raises(DataError, match="out of range"):
        select_targets(Oracle(), ds, [5])
    with pytest.raises(DataError, match="confidence > 0.6"):
        select_targets(Oracle(confidence_logit=0.1), ds, [1])


def test_select_sources_is_seeded_class_spread_and_batch_independent():
    labels = [c for c in range(10) for _ in range(20)]
    predicted = [(c + 1) % 10 if k % 4 == 0 else c for k, c in enumerate(labels)]
    ds = Tagged(labels, predicted)
    a = select_sources(Oracle(), ds, 50, seed=1, batch_size=7)
    b = select_sources(Oracle(), ds, 50, seed=1, batch_size=64)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50
    assert all(labels[i] == predicted[i] for i in a)
    assert np.bincount(np.array(labels)[a], minlength=10).tolist() == [5] * 10
    assert not np.array_equal(a, select_sources(Oracle(), ds, 50, seed=2))
    with pytest.raises(DataError, match="split has 200"):
        select_sources(Oracle(), ds, 201)
    with pytest.raises(DataError, match="only 150"):
        select_sources(Oracle(), ds, 160)


def test_assign_targets_other_class_and_independent_of_pool_split():
    labels = np.array([0, 0, 1, 2, 2, 3])
    t = assign_targets(labels, rounds=5, seed=0)
    assert t.shape == (6, 5)
    assert (labels[t] != labels[:, None]).all()
    assert np.array_equal(t, assign_targets(labels, rounds=5, seed=0))
    assert np.array_equal(t[:, :3], assign_targets(labels, rounds=3, seed=0))


def test_derangement_targets_give_every_pool_image_once_per_round_never_its_own():
    for size, rounds, seed in ((2, 3, 0), (5, 5, 1), (10, 5, 0), (37, 4, 2)):
        t = derangement_targets(size, rounds, seed)
        assert t.shape == (size, rounds)
        for r in range(rounds):
            assert sorted(t[:, r]) == list(range(size))  # a target once per round
            assert (t[:, r] != np.arange(size)).all()  # never its own
        assert np.array_equal(t, derangement_targets(size, rounds, seed))
        assert np.array_equal(t[:, :2], derangement_targets(size, 2, seed))  # round by round
    assert not np.array_equal(derangement_targets(10, 5, 0), derangement_targets(10, 5, 1))
    with pytest.raises(DataError, match="at least 2"):
        derangement_targets(1, 5)


def test_every_pair_targets_give_each_ordered_pair_once():
    for size in (2, 3, 5, 8):
        t = every_pair_targets(size, size - 1)
        pairs = {(s, t[s, r]) for s in range(size) for r in range(size - 1)}
        assert pairs == {(s, u) for s in range(size) for u in range(size) if s != u}
        for r in range(size - 1):  # each round a derangement, as the paper's rounds are
            assert sorted(t[:, r]) == list(range(size)) and (t[:, r] != np.arange(size)).all()
        assert np.array_equal(every_pair_targets(size, 1), t[:, :1])
    for rounds in (0, 5):
        with pytest.raises(DataError, match="--rounds must be 1..4"):
            every_pair_targets(5, rounds)


def test_random_classes_are_valid_and_distinct():
    cls = random_classes(1000, 5, seed=3)
    assert len(set(cls)) == 5 and all(0 <= c < 1000 for c in cls)
    assert cls == random_classes(1000, 5, seed=3)
    with pytest.raises(DataError):
        random_classes(10, 11)


def test_shapes_through_load_dataset():
    ds = load_dataset("shapes", seed=0)
    assert isinstance(ds, ShapesDataset) and len(ds) == 2000


def test_select_sources_fills_from_other_classes_when_one_runs_short():
    labels = [c for c in range(10) for _ in range(20)]
    predicted = [c if (c != 0 or k < 2) else 1 for c in range(10) for k in range(20)]
    ds = Tagged(labels, predicted)
    chosen = select_sources(Oracle(), ds, 50, seed=0, batch_size=16)
    counts = np.bincount(np.array(labels)[chosen], minlength=10)
    assert len(chosen) == 50 and counts[0] == 2 and counts[1:].min() >= 5 and counts.max() <= 6
    assert np.array_equal(chosen, select_sources(Oracle(), ds, 50, seed=0, batch_size=300))


def test_dataset_records_are_consistent():
    import level_set_traversal as cli
    from lst.data import DATASETS

    args = cli.parse_args(["m", "shapes", "--examples"])
    for info in DATASETS.values():
        if info.class_names is None:  # a folder: its classes come with its path
            assert info.path_flag is not None and info.needs_model_config
            continue
        assert info.num_classes == len(info.class_names) == len(set(info.class_names))
        assert len(set(info.default_targets)) >= 3
        assert all(0 <= c < info.num_classes for c in info.default_targets)
        if info.path_flag is not None:
            assert hasattr(args, info.path_flag.lstrip("-"))  # the command line has the flag
    shapes = load_dataset("shapes")
    assert tuple(shapes[0][0].shape) == DATASETS["shapes"].image_shape


def test_check_args_takes_classes_from_the_record(monkeypatch):
    import level_set_traversal as cli
    from lst.data import DATASETS

    args = cli.parse_args(["smallcnn-normal", "shapes", "--examples"])
    cli.check_args(args)
    assert args.target_classes == list(DATASETS["shapes"].default_targets)
    tiny = DATASETS["shapes"].__class__("tiny", ("a", "b", "c", "d"), (3, 8, 8), (1, 2, 3), None,
                                        "generated", DATASETS["shapes"].load)
    monkeypatch.setitem(DATASETS, "tiny", tiny)
    args = cli.parse_args(["smallcnn-normal", "tiny", "--examples"])
    cli.check_args(args)
    assert args.target_classes == [1, 2, 3]
    bad = cli.parse_args(["smallcnn-normal", "tiny", "--examples", "--target_classes", "1", "2", "4"])
    with pytest.raises(DataError, match="tiny has classes 0..3"):
        cli.check_args(bad)


# -- the folder dataset (torchvision's ImageFolder convention) --------------------------------


def test_folder_classes_follow_classes_txt_which_may_name_classes_without_images(tmp_path):
    from lst.data import dataset_info, folder_classes, load_folder

    write_tree(tmp_path, ["zebra", "ant", "moth"], 2, size=(20, 20))
    assert folder_classes(tmp_path) == ("ant", "moth", "zebra")  # sorted without classes.txt
    (tmp_path / "classes.txt").write_text("zebra\nnothing here\nant\n\nmoth\n")
    info = dataset_info("folder", tmp_path)
    assert info.class_names == ("zebra", "nothing here", "ant", "moth")
    assert info.default_targets == (0, 2, 3)  # the classes that have images
    data = load_folder(tmp_path, DataConfig((3, 20, 20), None))
    assert sorted(set(data.targets)) == [0, 2, 3] and len(data) == 6
    assert data.classes[data[0][1]] == Path(data.samples[0][0]).parent.name
    (tmp_path / "classes.txt").write_text("zebra\nant\nzebra\nmoth\n")
    with pytest.raises(DataError, match="'zebra' comes more than once"):
        folder_classes(tmp_path)


def test_folder_images_of_any_size_format_and_mode_are_resized_cropped_and_converted(tmp_path):
    from torchvision import transforms as T

    from lst.data import folder_image_size, load_folder

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # H 30, W 40
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(pixels).save(tmp_path / "a" / "x.bmp")
    Image.fromarray(pixels).convert("L").save(tmp_path / "b" / "y.gif")  # not in ImageFolder's list
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"")
    assert folder_image_size(tmp_path) == (30, 40)
    rgb = load_folder(tmp_path, DataConfig((3, 16, 16), None))
    assert len(rgb) == 2
    expected = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])(Image.fromarray(pixels))
    torch.testing.assert_close(rgb[0][0], expected)
    gray_as_rgb = rgb[1][0]
    assert gray_as_rgb.shape == (3, 16, 16) and torch.equal(gray_as_rgb[0], gray_as_rgb[2])
    gray = load_folder(tmp_path, DataConfig((1, 30, 40), None))
    assert gray[0][0].shape == (1, 30, 40)  # already the size: not resampled
    torch.testing.assert_close(gray[0][0][0], T.ToTensor()(Image.fromarray(pixels).convert("L"))[0])
    cropped = load_folder(tmp_path, DataConfig((3, 24, 24), 0.75, "bicubic"))  # resize 32, crop 24
    assert cropped[0][0].shape == (3, 24, 24)
    Image.fromarray(pixels[:20]).save(tmp_path / "a" / "z.png")
    with pytest.raises(DataError, match=r"2 sizes \(30x40 .*x\.bmp, 20x40 .*z\.png"):
        folder_image_size(tmp_path)
    with pytest.raises(DataError, match="3 \\(RGB\\) or 1 \\(grayscale\\)"):
        load_folder(tmp_path, DataConfig((4, 16, 16), None))


def test_two_folders_of_one_name_never_share_example_images(tmp_path):
    from lst.data import dataset_label, examples_prefix

    a, b = tmp_path / "one" / "my pets", tmp_path / "two" / "my pets"
    assert dataset_label("folder", a) == dataset_label("folder", b) == "my-pets"
    assert examples_prefix("folder", a) != examples_prefix("folder", b)
    assert examples_prefix("folder", a).startswith("my-pets-")
    assert examples_prefix("cifar10", "anything") == dataset_label("cifar10", "x") == "cifar10"
