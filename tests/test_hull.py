from itertools import combinations

import numpy as np
import pytest
import torch
from torch import nn

import lst
from lst.hull import (SEGMENT_DELTAS, delta_curve, hull_stats, limbs_and_chords,
                      paper_grid_points, segment_grid, segment_stats, table2_stats, triangle_edges,
                      triangle_grid)
from tests.conftest import frozen, linear_classifier


def test_grid_has_exactly_66_points_from_integers():
    grid = lst.triangle_grid(10)
    assert grid.shape == (66, 3)
    assert torch.allclose(grid.sum(1), torch.ones(66, dtype=grid.dtype))
    assert (grid >= 0).all()
    assert len({tuple((g * 10).round().int().tolist()) for g in grid}) == 66
    assert grid[0].tolist() == [1.0, 0.0, 0.0]
    assert len(lst.triangle_grid(7)) == 36


def test_the_papers_grid_keeps_64_points_by_its_own_float_test():
    """The paper's code builds (t1, t2) from np.arange(11)/10 and skips 1 - t1 - t2 < 0."""
    keep = paper_grid_points()
    assert keep.sum() == 64
    dropped = triangle_grid().numpy()[~keep]
    np.testing.assert_allclose(dropped[:, 1:], [[0.8, 0.2], [0.9, 0.1]])  # (a, b): chord points
    t = np.arange(11) / 10
    assert sum(1 for t1 in t for t2 in t if not 1 - t1 - t2 < 0) == 64  # the loop, literally
    edges = triangle_edges()
    assert keep[0] and keep[edges["first"]].all() and keep[edges["second"]].all()


def test_the_64_point_view_is_table_2_over_those_points():
    rng = np.random.default_rng(0)
    confs = rng.uniform(0.5, 1.0, size=(3, 6, 66))  # 3 sources, 6 triangles each
    keep = paper_grid_points()
    view = table2_stats(confs, keep)
    flat = confs.reshape(-1, 66)
    p_src = flat[:, 0]
    np.testing.assert_allclose(view["mean"], flat[:, keep].mean(1).reshape(3, 6).mean(1))
    np.testing.assert_allclose(view["frac_above_0.1"],
                               (flat[:, keep] > p_src[:, None] - 0.1).mean(1).reshape(3, 6).mean(1))
    every = table2_stats(confs)
    for key in ("p_src", "edge_mean", "edge_min"):  # the source and its edges are all kept
        np.testing.assert_array_equal(view[key], every[key])
    assert not np.allclose(view["mean"], every["mean"])
    with pytest.raises(ValueError, match="keep the source"):
        hull_stats(flat, points=np.r_[False, keep[1:]])


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


class ProductModel(nn.Module):
    """Two classes, logit_0 = 2 - 40 u v and logit_1 = 0, where u and v are the mean pixel of the
    top and of the bottom half, less 0.5. Where u = 0 or v = 0, p_0 = sigmoid(2)."""

    def forward(self, x):
        u = x[..., :2, :].flatten(1).mean(1) - 0.5
        v = x[..., 2:, :].flatten(1).mean(1) - 0.5
        return torch.stack([2 - 40 * u * v, torch.zeros_like(u)], dim=1)


def test_edges_are_the_two_that_touch_the_source():
    """Source 0.5 everywhere (u = v = 0); blind spot a brightens the top half (u = 0.5, v = 0),
    blind spot b the bottom half (u = 0, v = 0.5). Both source edges keep u v = 0, so p_0 is
    sigmoid(2) along them; the opposite edge (a + b = 1) has u v > 0 and dips to sigmoid(-0.5)."""
    shape = (1, 3, 4, 4)
    source = torch.full(shape, 0.5)
    first, second = source.clone(), source.clone()
    first[..., :2, :] = 1.0
    second[..., 2:, :] = 1.0
    confs = lst.hull_confidences(ProductModel(), source, first, second, torch.tensor([0]))
    grid = lst.triangle_grid(10)
    opposite = confs[0, (grid[:, 1] + grid[:, 2] - 1).abs() < 1e-9]
    p_src = torch.sigmoid(torch.tensor(2.0)).item()
    # guard: the opposite edge really dips far below the source edges, at its midpoint
    assert opposite.min().item() == pytest.approx(torch.sigmoid(torch.tensor(-0.5)).item(), abs=1e-5)
    assert opposite.min().item() < p_src - 0.4
    stats = lst.hull_stats(confs)
    assert stats["edge_min"][0] == pytest.approx(0.0, abs=1e-6)
    assert stats["edge_mean"][0] == pytest.approx(p_src, abs=1e-6)
    assert stats["mean"][0] < p_src - 0.05  # the triangle's inside is not the edges' value


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


@pytest.mark.kernels
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


def _spot(u: float, v: float) -> torch.Tensor:
    """A (3,4,4) image whose top half is 0.5 + u and bottom half 0.5 + v (ProductModel's u, v)."""
    image = torch.full((3, 4, 4), 0.5)
    image[:, :2] += u
    image[:, 2:] += v
    return image


def _literal_segment_fractions(model, source, spots, pairs, deltas):
    """Table 2b by a plain loop: every segment, 21 points one by one, its minimum against p_src."""
    def conf(x):
        return torch.softmax(model(x[None]), dim=1)[0, 0].item()

    def minimum(start, end):
        return min(conf((1 - k / 20) * start + (k / 20) * end) for k in range(21))

    p_src = conf(source)
    limb_mins = [minimum(source, s) for s in spots]
    chord_mins = [minimum(spots[a], spots[b]) for a, b in pairs]
    return {d: (np.mean([m > p_src - d for m in limb_mins]),
                np.mean([m > p_src - d for m in chord_mins])) for d in deltas}


def test_limbs_and_chords_match_a_literal_loop_star_like_not_convex():
    """Blind spots on the axes u = 0 or v = 0 keep p_0 = sigmoid(2) on their limbs; chords between
    the two axes pass through u v > 0 and dip; a blind spot off the axes fails at small delta."""
    model = ProductModel()
    source = _spot(0, 0)
    spots = torch.stack([_spot(0.5, 0), _spot(0, 0.5), _spot(0.3, 0), _spot(0.25, 0.25),
                         _spot(0.12, 0.12)])
    pairs = list(combinations(range(len(spots)), 2))
    triangles = lst.source_hull_confidences(model, source, 0, spots, pairs)
    limbs, chords = limbs_and_chords(model, source, 0, spots, pairs, triangles, chunk_size=7)
    stats = segment_stats(limbs[None].numpy(), chords[None].numpy())
    expected = _literal_segment_fractions(model, source, spots, pairs, SEGMENT_DELTAS)
    for d, (limbs_kept, chords_kept) in expected.items():
        assert stats[f"limbs_kept_{d:g}"][0] == pytest.approx(limbs_kept)
        assert stats[f"chords_kept_{d:g}"][0] == pytest.approx(chords_kept)
    # guard: the level set is star-like but not convex here, and delta matters
    assert expected[0.2][0] > expected[0.2][1] > 0
    assert expected[0.05][0] < expected[0.2][0] and expected[0.05][1] < expected[0.2][1]
    # the even points are the triangles' edge points, the odd ones new; together the segments
    edges = triangle_edges()
    assert torch.equal(chords[:, ::2], triangles[:, edges["chord"]])
    direct = lst.segment_confidences(model, spots[[a for a, _ in pairs]], spots[[b for _, b in pairs]],
                                     torch.zeros(len(pairs), dtype=torch.int64))
    torch.testing.assert_close(chords, direct, atol=1e-6, rtol=0)
    direct = lst.segment_confidences(model, source.expand_as(spots), spots,
                                     torch.zeros(len(spots), dtype=torch.int64))
    torch.testing.assert_close(limbs, direct, atol=1e-6, rtol=0)


def test_segment_grid_even_points_are_triangle_edge_points():
    grid, seg = lst.triangle_grid(10), segment_grid(20)
    edges = triangle_edges(10)
    assert torch.equal(seg[::2, 1], grid[edges["chord"], 2])  # weight of the second blind spot
    assert torch.equal(seg[::2, 0], grid[edges["first"], 0])  # weight of the source
    assert torch.equal(seg[::2, 1], grid[edges["first"], 1])


def test_delta_curve_counts_points_per_source():
    confs = np.array([[[0.9, 0.9, 0.5, 0.8]], [[0.6, 0.1, 0.6, 0.7]]])  # (N=2, M=1, P=4)
    curve = delta_curve(confs, deltas=[0.0, 0.05, 0.15, 0.5, 1.0])
    np.testing.assert_allclose(curve[0], [0, 0.5, 0.75, 1, 1])  # p > 0.9 - d
    np.testing.assert_allclose(curve[1], [0.25, 0.75, 0.75, 1, 1])  # p > 0.6 - d
    with_nan = np.concatenate([confs, np.full((2, 1, 4), np.nan)], axis=1)
    np.testing.assert_allclose(delta_curve(with_nan, [0.0, 0.15]), curve[:, [0, 2]])


def test_matched_geometry_is_measured_on_the_recorded_iterates():
    """full_eval with matched fractions: "final" is Table 2b's limbs and chords, each fraction's
    row counts the walks that reached it, and a source's chords and triangles at f are those of
    its saved matched iterates."""
    from lst.experiments import run_full_eval
    from lst.shapes import ShapesDataset
    from models import load_model

    model = load_model("smallcnn-normal", "shapes")[0]
    dataset = ShapesDataset("test", seed=0)
    settings = lst.LSTSettings(iters=20, step_size=0.1, pthresh=0.2,
                               matched_fractions=(0.25, 0.5, 0.9))
    results, all_confs = run_full_eval(model, dataset, settings, num_samples=5, rounds=3,
                                       get_final_imgs=True)
    stats = results["matched_stats"]
    assert list(stats) == ["0.25", "0.5", "0.9", "final"]
    for d in SEGMENT_DELTAS:
        for kind in ("limbs", "chords"):
            np.testing.assert_array_equal(stats["final"][f"{kind}_kept_{d:g}"],
                                          results["segment_stats"][f"{kind}_kept_{d:g}"])
    reached = results["matched_iters"] >= 0  # (N,R,F)
    for f, key in enumerate(["0.25", "0.5", "0.9"]):
        np.testing.assert_allclose(stats[key]["reached"], reached[:, :, f].mean(axis=1))
    assert reached[:, :, 0].all() and not reached[:, :, 2].all()  # a fraction some walks miss
    # one source at f = 0.5, recomputed from its saved 8-bit iterates
    i, f = 0, 1
    walks = np.flatnonzero(reached[i, :, f])
    image, label = dataset[int(results["source_indices"][i])]
    spots = torch.from_numpy(results["matched_images"][i, walks, f]).float() / 255
    pairs = list(combinations(range(len(walks)), 2))
    triangles = lst.hull.source_hull_confidences(model, image, label, spots, pairs)
    limbs, chords = limbs_and_chords(model, image, label, spots, pairs, triangles)
    p_src = float(triangles[0, 0])
    assert stats["0.5"]["chords_kept_0.05"][i] == pytest.approx(
        float((chords.min(dim=1).values > p_src - 0.05).float().mean()))
    assert stats["0.5"]["triangles_kept_0.1"][i] == pytest.approx(
        float((triangles.min(dim=1).values > p_src - 0.1).float().mean()))
    assert "matched" in results["seconds"]
