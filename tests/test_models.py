"""The real loading code, offline: timm from a local file and from the Hugging Face cache,
RobustBench from checkpoints placed where it looks, the project's own weights."""
import huggingface_hub
import pytest
import timm
import torch

import models
import models.registry
from lst.data import DataConfig
from models import ModelError, load_model


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and empty caches: every weight a test needs, it writes itself."""
    monkeypatch.setattr(models.registry, "reachable", lambda *a, **k: False)
    monkeypatch.setenv("LST_HOME", str(tmp_path / "lst_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def assert_frozen_eval(model):
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_timm_model_from_a_local_checkpoint(tmp_path):
    reference = timm.create_model("resnet50.tv_in1k", pretrained=False)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model, data = load_model("resnet50-normal", "imagenet", checkpoint=str(path))
    assert_frozen_eval(model)
    assert data == DataConfig((3, 224, 224), 0.875, "bilinear")
    x = torch.rand(2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), reference.eval()((x - mean) / std))


def test_timm_model_from_the_hugging_face_cache(tmp_path):
    """A file laid out as huggingface_hub caches it is found without any network."""
    from safetensors.torch import save_file

    reference = timm.create_model("deit_small_patch16_224.fb_in1k", pretrained=False)
    repo = tmp_path / "hf" / "models--timm--deit_small_patch16_224.fb_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(snapshot / "model.safetensors"))
    model, data = load_model("deit_small_patch16_224-normal", "imagenet")
    assert data.interpolation == "bicubic" and data.crop_pct == 0.9
    x = torch.rand(1, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref_out = reference.eval()((x - mean) / std)
    torch.testing.assert_close(model(x), ref_out, atol=1e-4, rtol=1e-4)


def test_timm_weights_missing_offline_fail_fast_naming_the_file():
    with pytest.raises(ModelError, match="timm/resnet50.tv_in1k"):
        load_model("resnet50-normal", "imagenet")


ROBUST_CASES = [
    ("imagenet", "resnet50-linf", "Salman2020Do_R50", 224),
    ("imagenet", "deit_small_patch16_224-linf", "Singh2023Revisiting_ViT-S-ConvStem", 224),
    ("cifar10", "wideresnet-normal", "Standard", 32),
    ("cifar10", "wideresnet-linf", "Wu2020Adversarial_extra", 32),
]


@pytest.mark.parametrize("dataset,name,rb_name,size", ROBUST_CASES)
def test_robustbench_model_from_a_placed_checkpoint(tmp_path, dataset, name, rb_name, size):
    """Full-size architecture, random weights, written where RobustBench looks for them."""
    models.import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    reference = model_dicts[BenchmarkDataset(dataset)][ThreatModel.Linf][rb_name]["model"]().eval()
    state = reference.state_dict()
    if dataset == "imagenet":  # RobustBench adds the wrapper's "model." prefix itself
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model_dir = tmp_path / "rb"
    path = models.robustbench_checkpoint_path(model_dir, dataset, rb_name)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model, data = load_model(name, dataset, model_dir=model_dir)
    assert_frozen_eval(model)
    assert data.input_size == (3, size, size)
    x = torch.rand(2, 3, size, size)
    torch.testing.assert_close(model(x), reference(x))
    # the same file given as --load_model_path
    again, _ = load_model(name, dataset, checkpoint=str(path), model_dir=tmp_path / "empty")
    torch.testing.assert_close(again(x), reference(x))


def test_robustbench_checkpoint_missing_offline_names_the_file(tmp_path):
    with pytest.raises(ModelError, match=r"Standard\.pt"):
        load_model("wideresnet-normal", "cifar10", model_dir=tmp_path / "rb")


def test_shipped_smallcnn_models_load():
    for name in ("smallcnn-normal", "smallcnn-linf"):
        model, data = load_model(name, "shapes")
        assert_frozen_eval(model)
        assert data.input_size == (3, 32, 32) and data.crop_pct is None
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_own_model_from_a_checkpoint_and_bad_files(tmp_path):
    from models.architectures import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN().eval()
    path = tmp_path / "w.pt"
    torch.save({"arch": "smallcnn", "num_classes": 10, "state_dict": net.state_dict()}, path)
    model, _ = load_model("smallcnn-normal", "shapes", checkpoint=str(path))
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model(x), net(x))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt"):
        load_model("smallcnn-normal", "shapes", checkpoint=str(junk))
    with pytest.raises(ModelError, match="not a file"):
        load_model("smallcnn-normal", "shapes", checkpoint=str(tmp_path / "missing.pt"))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ModelError, match="smallcnn-normal"):
        load_model("nonsense-normal", "shapes")
    with pytest.raises(ModelError, match="resnet50-linf"):
        load_model("resnet50-l2", "imagenet")
    with pytest.raises(ModelError, match="not a timm model"):
        load_model("no_such_arch-normal", "imagenet")
    with pytest.raises(ModelError, match="unknown dataset"):
        load_model("smallcnn-normal", "mnist")


@pytest.mark.slow
def test_smallcnn_is_trained_on_first_use_when_no_weights_ship(tmp_path, monkeypatch):
    """About a minute on 2 CPU cores: the real first-use training, cached in LST_HOME."""
    monkeypatch.setattr(models.registry, "WEIGHTS_DIR", tmp_path / "no_shipped_weights")
    model, _ = load_model("smallcnn-normal", "shapes")
    cached = tmp_path / "lst_home" / "weights" / "smallcnn-normal.pt"
    assert cached.is_file()
    assert torch.load(cached, weights_only=True)["meta"]["clean_acc"] >= 0.97
    monkeypatch.setattr(models.registry, "_train_smallcnn", lambda *a: pytest.fail("trained twice"))
    load_model("smallcnn-normal", "shapes")
