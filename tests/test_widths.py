import torch
from torch import nn

import lst
from tests.conftest import frozen


def test_directions_are_unit_and_orthogonal_to_the_step():
    step = torch.randn(3, 8, 8)
    dirs = lst.random_orthogonal_directions(step, 32, torch.Generator().manual_seed(0))
    flat = dirs.flatten(1)
    torch.testing.assert_close(flat.norm(dim=1), torch.ones(32))
    assert (flat @ step.flatten() / step.norm()).abs().max() < 1e-5


def test_width_shape_and_distance_zero_row(cnn):
    g = torch.Generator().manual_seed(0)
    points, steps = torch.rand(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    labels = torch.tensor([1, 2, 3])
    widths = lst.path_widths(cnn, points, steps, labels, (0.5, 1.0, 2.0), num_directions=20,
                             chunk_size=9)
    assert widths.shape == (3, 4, 2)
    conf = lst.class_confidence_of(cnn, points, labels)
    torch.testing.assert_close(widths[:, 0, 0], conf)
    torch.testing.assert_close(widths[:, 0, 1], conf)
    assert (widths[:, 1:, 0] <= widths[:, 1:, 1]).all()  # 5th <= 95th percentile
    again = lst.path_widths(cnn, points, steps, labels, (0.5, 1.0, 2.0), num_directions=20,
                            chunk_size=1000)
    torch.testing.assert_close(widths, again)  # seeded directions, chunking irrelevant


def test_widths_of_a_constant_model_are_flat():
    model = frozen(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    points = torch.rand(2, 3, 4, 4)
    widths = lst.path_widths(model, points, torch.randn(2, 3, 4, 4), torch.tensor([0, 1]),
                             (1.0, 5.0), num_directions=8)
    torch.testing.assert_close(widths, torch.full_like(widths, 1 / 3))
