"""K walks per pair (--restarts): restart 0 is the run without restarts, the restart arrays are
the walks' own, and Table 4's statistics count what they say."""
import numpy as np
import pytest
import torch

from lst import LSTSettings, level_set_traversal
from lst.data import stack_items
from lst.experiments import run_examples, run_full_eval
from lst.hull import segment_confidences
from lst.restarts import restart_pairs, restart_stats
from lst.shapes import ShapesDataset
from models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("smallcnn-normal", "shapes")[0]


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset("test", seed=0)


SETTINGS = LSTSettings(iters=12, step_size=0.1, pthresh=0.2)


@pytest.mark.kernels
def test_restart_zero_is_the_run_without_restarts_and_the_arrays_are_the_walks_own(model, dataset):
    """Equality where the arithmetic is the same: each batch of the run (2 pairs x 3 restarts)
    walked again without restarts, in the same batch, gives restart 0 bit for bit; walked again
    with restarts it gives every restart array bit for bit. (Another batch size would change the
    kernels, so the last bits, on some CPUs: tests/test_traversal.py checks batch independence
    to rounding.)"""
    k, pairs_per_batch = 3, 2
    results, _ = run_full_eval(model, dataset, SETTINGS, num_samples=4, rounds=2,
                               batch_size=k * pairs_per_batch, restarts=k)
    for key in ("final_confs", "l2", "ssim", "distance_left", "passes"):
        np.testing.assert_array_equal(results[f"restart_{key}"][..., 0], results[key])
    assert results["restart_final_confs"].shape == (4, 2, k)
    assert results["restart_chord_confs"].shape == (4, 2, len(restart_pairs(k)), 21)
    # the walks again, batch by batch: pair p uses sample id p, restart r its own noise
    sources, labels = stack_items(dataset, np.repeat(results["source_indices"], 2))
    targets, _ = stack_items(dataset, results["target_indices"].ravel())
    walks = [t.repeat_interleave(k, dim=0) for t in (sources, labels, targets)]
    ids = np.repeat(range(8), k).tolist()
    spots, confs = [], []
    for rows in torch.arange(8 * k).split(k * pairs_per_batch):
        batch = [t[rows] for t in walks]
        restarted = level_set_traversal(model, *batch, SETTINGS, sample_ids=[ids[r] for r in rows],
                                        restarts=list(range(k)) * pairs_per_batch)
        without = level_set_traversal(model, *batch, SETTINGS, sample_ids=[ids[r] for r in rows])
        assert torch.equal(restarted.final_images[0::k], without.final_images[0::k])
        assert torch.equal(restarted.final_confs[0::k], without.final_confs[0::k])
        spots.append(restarted.final_images)
        confs.append(restarted.final_confs)
    spots = torch.cat(spots).view(8, k, 3, 32, 32)
    np.testing.assert_array_equal(results["restart_final_confs"].reshape(8, k),
                                  torch.cat(confs).view(8, k).numpy())
    # spreads and chords: from these blind spots, one forward pass in other batches (rounding)
    span = (targets - sources).flatten(1).norm(dim=1)
    for p in range(8):
        distances = [(spots[p, a] - spots[p, b]).norm() for a, b in restart_pairs(k)]
        np.testing.assert_allclose(results["restart_spread"].ravel()[p],
                                   float(sum(distances) / len(distances) / span[p]), rtol=1e-4)
        a, b = zip(*restart_pairs(k))
        chords = segment_confidences(model, spots[p, list(a)], spots[p, list(b)],
                                     labels[p].repeat(len(a)))
        np.testing.assert_allclose(results["restart_chord_confs"].reshape(8, -1, 21)[p], chords,
                                   atol=1e-5)
    assert (results["restart_spread"] > 0).all()  # the restarts did end apart


def test_restart_stats_count_chords_and_spreads():
    """Two pairs of K = 3: chords kept above p0 - delta, spreads and stds as defined."""
    chord = np.ones((2, 3, 21))
    chord[0, 0, 10] = 0.9   # pair 0: one chord dips 0.1 below p0 = 1
    chord[1, :, 5] = 0.97   # pair 1: all chords dip 0.03
    results = {"init_confs": np.ones(2), "restart_chord_confs": chord,
               "restart_spread": np.array([0.1, 0.3]),
               "restart_final_confs": np.array([[0.9, 0.9, 0.9], [0.8, 1.0, 0.9]]),
               "restart_l2": np.zeros((2, 3)), "restart_ssim": np.ones((2, 3)),
               "restart_distance_left": np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])}
    stats = restart_stats(results, np.array([True, True]))
    np.testing.assert_allclose(stats["chords_kept_0.05"], [2 / 3, 1.0])
    np.testing.assert_allclose(stats["chords_kept_0.1"], [2 / 3, 1.0])  # 0.9 is not > 0.9
    np.testing.assert_allclose(stats["chords_kept_0.2"], [1.0, 1.0])
    np.testing.assert_allclose(stats["spread"], [0.1, 0.3])
    np.testing.assert_allclose(stats["distance_left"], [0.2, 0.5])
    np.testing.assert_allclose(stats["final_confs_std"], [0.0, np.std([0.8, 1.0, 0.9])])
    only_second = restart_stats(results, np.array([False, True]))
    np.testing.assert_allclose(only_second["spread"], [0.3])


def test_examples_with_restarts_and_diversity(model, dataset, tmp_path):
    settings = LSTSettings(iters=12, step_size=0.1, pthresh=0.2, diversity=0.3)
    results = run_examples(model, dataset, [0, 1, 2], settings, out_dir=tmp_path,
                           dataset_name="shapes", restarts=2)
    assert results["restart_blind_spots"].shape == (3, 3, 2, 3, 32, 32)
    off = ~np.eye(3, dtype=bool)
    assert np.isnan(results["restart_spread"][~off]).all()
    assert (results["restart_spread"][off] > 0).all()
    kept = results["kept"][off]
    drop = results["init_confs"][:, None, None] - results["restart_final_confs"]
    assert (drop[off][kept] < 0.2).all()  # every restart stays in the level set
    # the push has an effect: the same restarts without it end closer together
    alone = run_examples(model, dataset, [0, 1, 2], LSTSettings(iters=12, step_size=0.1,
                                                                pthresh=0.2),
                         out_dir=tmp_path, dataset_name="shapes", restarts=2)
    ratio = results["restart_spread"][off] / alone["restart_spread"][off]
    assert (ratio > 3).all()  # measured 7-47
