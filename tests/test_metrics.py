import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import lst
from lst import metrics


def test_ssim_agrees_with_scikit_image():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 32, 32, generator=g)
    b = (a + 0.3 * torch.randn(4, 3, 32, 32, generator=g)).clamp(0, 1)
    ours = lst.image_distances(a, b, lpips=False)["ssim"]
    theirs = [structural_similarity(x.numpy(), y.numpy(), channel_axis=0, data_range=1.0,
                                    gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_l2_and_linf():
    a = torch.zeros(2, 3, 16, 16)
    b = torch.zeros(2, 3, 16, 16)
    b[0] = 0.5
    b[1, 0, 0, 0] = 1.0
    d = lst.image_distances(a, b, lpips=False)
    np.testing.assert_allclose(d["l2"], [0.5, 1 / np.sqrt(768)], rtol=1e-6)
    np.testing.assert_allclose(d["linf"], [0.5, 1.0])
    assert np.isnan(d["lpips"]).all()


def test_lpips_is_zero_for_identical_images_with_random_backbone():
    torch.manual_seed(0)
    net = lst.lpips_network(pretrained_backbone=False)
    a = torch.rand(3, 3, 64, 64)
    d = lst.image_distances(a, a.clone(), lpips_net=net, chunk_size=2)
    np.testing.assert_allclose(d["lpips"], 0.0, atol=1e-6)
    other = lst.image_distances(a, torch.rand(3, 3, 64, 64), lpips_net=net)
    assert (other["lpips"] > 0).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        lst.image_distances(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))


REAL_LOADER = torch.hub.load_state_dict_from_url


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, an empty LPIPS cache, and any download attempt fails the test."""
    import torchvision.models._api

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(metrics.ALEXNET_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(metrics, "_LPIPS_CACHE", {})
    return tmp_path / "torch"


def random_alexnet_file(path):
    import torchvision

    torch.manual_seed(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def test_without_alexnet_weights_lpips_is_nan_and_nothing_is_downloaded(torch_home, caplog, capfd):
    with caplog.at_level("WARNING"):
        assert lst.lpips_network() is None
        d = lst.image_distances(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert np.isnan(d["lpips"]).all()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(torch_home) in warnings[0].getMessage()
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err


def test_alexnet_weights_in_the_hub_cache_give_torchmetrics_own_lpips(torch_home, monkeypatch):
    from torchmetrics.functional.image.lpips import _LPIPS

    import torchvision.models._api

    random_alexnet_file(torch_home / "hub" / "checkpoints" / metrics.ALEXNET_FILE)
    net = lst.lpips_network()
    assert net is not None
    # torchmetrics' own pretrained path reads the same cache file (the file is there: no download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", REAL_LOADER)
    theirs = _LPIPS(net="alex").eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    with torch.no_grad():
        expected = theirs(a, b, normalize=True).flatten()
    d = lst.image_distances(a, b)
    np.testing.assert_allclose(d["lpips"], expected.numpy(), rtol=1e-6)
    assert (d["lpips"] > 0).all()


def test_alexnet_weights_from_the_environment_variable(torch_home, tmp_path, monkeypatch):
    path = random_alexnet_file(tmp_path / "mine" / "alexnet.pth")
    monkeypatch.setenv(metrics.ALEXNET_ENV, str(path))
    assert metrics.alexnet_weights_path() == path
    net = lst.lpips_network()
    saved = torch.load(path, weights_only=True)
    torch.testing.assert_close(net.net.slice1[0].weight, saved["features.0.weight"])
