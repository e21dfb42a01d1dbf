import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import lst


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
