import numpy as np
import torch
from torch import nn

import lst
from tests.conftest import frozen, linear_classifier


def test_grid_has_exactly_66_points_from_integers():
    grid = lst.triangle_grid(10)
    assert grid.shape == (66, 3)
    assert torch.allclose(grid.sum(1), torch.ones(66, dtype=grid.dtype))
    assert (grid >= 0).all()
    assert len({tuple((g * 10).round().int().tolist()) for g in grid}) == 66
    assert grid[0].tolist() == [1.0, 0.0, 0.0]
    assert len(lst.triangle_grid(7)) == 36


def test_constant_confidence_model():
    model = frozen(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([2.0, 0.0, 0.0, -1.0]))
    p = torch.softmax(model[1].bias, 0)[0].item()
    x = torch.rand(3, 3, 2, 2)
    confs = lst.hull_confidences(model, x[:1], x[1:2], x[2:3], torch.tensor([0]))
    assert confs.shape == (1, 66)
    stats = lst.hull_stats(confs)
    assert np.allclose(stats["p_src"], p) and np.allclose(stats["mean"], p)
    assert stats["frac_above_0"][0] == 0.0  # strictly above p_src: none when all are equal
    for d in (0.1, 0.2, 0.3):
        assert stats[f"frac_above_{d:g}"][0] == 1.0
    assert np.allclose(stats["edge_mean"], p) and np.allclose(stats["edge_min"], 0, atol=1e-6)


def two_class_logit_model(dim):
    """logits = (w.x, 0) with w = 1 on every pixel / dim: p_0 = sigmoid(mean pixel value * 4)."""
    weight = torch.zeros(2, dim)
    weight[0] = 4.0 / dim
    return linear_classifier(weight, torch.zeros(2))


def test_statistics_match_an_analytic_model():
    shape = (3, 4, 4)
    model = two_class_logit_model(48)
    # mean pixel values s: source 0.5, first vertex 1.0, second 0.0 -> logit = 4*s - 0 ... linear
    source, first, second = (torch.full((1, *shape), v) for v in (0.5, 1.0, 0.0))
    confs = lst.hull_confidences(model, source, first, second, torch.tensor([0]))[0].double()
    grid = lst.triangle_grid(10)
    logit = 4 * (grid[:, 0] * 0.5 + grid[:, 1] * 1.0 + grid[:, 2] * 0.0)
    expected = torch.sigmoid(logit)
    torch.testing.assert_close(confs, expected, atol=1e-6, rtol=0)
    stats = lst.hull_stats(confs[None].numpy())
    p_src = expected[0].item()
    a = np.arange(11) / 10
    edge_first = 1 / (1 + np.exp(-4 * ((1 - a) * 0.5 + a * 1.0)))  # b = 0
    edge_second = 1 / (1 + np.exp(-4 * ((1 - a) * 0.5)))  # a = 0
    assert np.isclose(stats["p_src"][0], p_src)
    assert np.isclose(stats["mean"][0], expected.mean().item())
    assert np.isclose(stats["edge_mean"][0], (edge_first.mean() + edge_second.mean()) / 2, atol=1e-6)
    assert np.isclose(stats["edge_min"][0], edge_second.min() - p_src, atol=1e-6)
    for d in (0.0, 0.1, 0.2, 0.3):
        assert np.isclose(stats[f"frac_above_{d:g}"][0], (expected > p_src - d).double().mean())


def test_edges_are_the_two_that_touch_the_source():
    shape = (3, 4, 4)
    model = two_class_logit_model(48)
    # the edge between the two blind spots dips (0.0 to 0.0 through -) only if it were used
    source, first, second = (torch.full((1, *shape), v) for v in (1.0, 1.0, 1.0))
    first[..., :2, :] = 0.0
    second[..., 2:, :] = 0.0
    confs = lst.hull_confidences(model, source, first, second, torch.tensor([0]))
    stats = lst.hull_stats(confs)
    # both source edges go from mean 1.0 to mean 0.5; the opposite edge stays at 0.5
    assert np.isclose(stats["edge_min"][0], torch.sigmoid(torch.tensor(2.0)).item()
                      - torch.sigmoid(torch.tensor(4.0)).item(), atol=1e-6)


def test_source_hull_stats_aggregates_over_pairs():
    shape = (3, 4, 4)
    model = two_class_logit_model(48)
    source = torch.full(shape, 0.5)
    spots = torch.stack([torch.full(shape, v) for v in (1.0, 0.0, 0.25)])
    agg = lst.source_hull_stats(model, source, 0, spots)
    per_pair = []
    for i, j in ((0, 1), (0, 2), (1, 2)):
        c = lst.hull_confidences(model, source[None], spots[i:i + 1], spots[j:j + 1],
                                 torch.tensor([0]))
        per_pair.append(lst.hull_stats(c))
    assert np.isclose(agg["mean"], np.mean([s["mean"][0] for s in per_pair]))
    assert np.isclose(agg["edge_min"], min(s["edge_min"][0] for s in per_pair))
    assert np.isclose(agg["frac_above_0.2"], np.mean([s["frac_above_0.2"][0] for s in per_pair]))


def test_chunking_does_not_change_hull_confidences(cnn):
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2])
    whole = lst.hull_confidences(cnn, x[:2], x[2:], x[[1, 0]], labels, chunk_size=1000)
    small = lst.hull_confidences(cnn, x[:2], x[2:], x[[1, 0]], labels, chunk_size=7)
    torch.testing.assert_close(whole, small, atol=1e-6, rtol=0)


def test_segment_confidences_endpoints(cnn):
    g = torch.Generator().manual_seed(0)
    starts, ends = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    labels = torch.tensor([0, 4, 7])
    confs = lst.segment_confidences(cnn, starts, ends, labels, num_points=11, chunk_size=4)
    assert confs.shape == (3, 11)
    torch.testing.assert_close(confs[:, 0], lst.class_confidence_of(cnn, starts, labels))
    torch.testing.assert_close(confs[:, -1], lst.class_confidence_of(cnn, ends, labels))
