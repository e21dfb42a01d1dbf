"""Blind spots judged by other models: the numbers equal a direct evaluation of the blind spots."""
import numpy as np
import pytest
import torch

from lst import LSTSettings, level_set_traversal, probabilities
from lst.data import stack_items
from lst.experiments import run_examples, run_full_eval
from lst.shapes import ShapesDataset
from lst.transfer import judge
from models import load_model


@pytest.fixture(scope="module")
def models():
    return load_model("smallcnn-normal", "shapes")[0], load_model("smallcnn-linf", "shapes")[0]


def test_judge_is_each_models_softmax(models):
    normal, linf = models
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    src, tgt = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 2, 3, 4, 0, 2])
    out = judge({"a": normal, "b": linf}, x, src, tgt, chunk_size=4)
    assert out["source_conf"].shape == out["pred"].shape == (6, 2)
    for j, model in enumerate((normal, linf)):
        probs = probabilities(model, x)
        np.testing.assert_allclose(out["source_conf"][:, j], probs[range(6), src], atol=1e-6)
        np.testing.assert_allclose(out["target_conf"][:, j], probs[range(6), tgt], atol=1e-6)
        np.testing.assert_array_equal(out["pred"][:, j], probs.argmax(1))


@pytest.mark.kernels
def test_full_eval_transfer_equals_the_other_model_on_the_float_blind_spots(models):
    normal, linf = models
    dataset = ShapesDataset("test", seed=0)
    settings = LSTSettings(iters=15, step_size=0.1, pthresh=0.2)
    results, _ = run_full_eval(normal, dataset, settings, num_samples=6, rounds=2, batch_size=5,
                               transfer_models={"smallcnn-linf": linf})
    assert results["transfer_models"] == ["smallcnn-linf"]
    assert results["transfer_pred"].shape == (6, 2, 2)
    # the blind spots again, as float images, in the run's batches of 5 (the same arithmetic):
    # pair k = (source k // 2, round k % 2) uses sample id k
    sources, labels = stack_items(dataset, np.repeat(results["source_indices"], 2))
    targets, target_labels = stack_items(dataset, results["target_indices"].ravel())
    blind = torch.cat([level_set_traversal(normal, sources[rows], labels[rows], targets[rows],
                                           settings, sample_ids=rows.tolist()).final_images
                       for rows in torch.arange(12).split(5)])
    # the straight-line baseline, recomputed: x_s + f (x_t - x_s) at the blind spot's own progress
    progress = 1 - ((targets - blind).flatten(1).norm(dim=1)
                    / (targets - sources).flatten(1).norm(dim=1))
    np.testing.assert_allclose(1 - results["distance_left"].ravel(), progress, atol=1e-5)
    assert (progress > 0.05).all() and (progress < 0.95).any()  # stopped short: a real baseline
    line = sources + progress.view(-1, 1, 1, 1) * (targets - sources)
    for j, model in enumerate((normal, linf)):
        for images, prefix in ((blind, "transfer_"), (targets, "transfer_baseline_"),
                               (line, "transfer_line_")):
            probs = probabilities(model, images)
            got = {k: results[f"{prefix}{k}"][..., j].ravel()
                   for k in ("source_conf", "target_conf", "pred")}
            np.testing.assert_allclose(got["source_conf"], probs[range(12), labels], atol=1e-5)
            np.testing.assert_allclose(got["target_conf"], probs[range(12), target_labels],
                                       atol=1e-5)
            np.testing.assert_array_equal(got["pred"], probs.argmax(1))
    # judge 0 is the traversed model itself: it sees its own blind spots' confidence
    np.testing.assert_allclose(results["transfer_source_conf"][..., 0], results["final_confs"],
                               atol=1e-5)
    # guard: the other model disagrees somewhere, or the test would not tell the judges apart
    assert not np.allclose(results["transfer_source_conf"][..., 1], results["final_confs"],
                           atol=0.05)


def test_examples_transfer_is_square_with_an_empty_diagonal(models, tmp_path):
    normal, linf = models
    settings = LSTSettings(iters=10, step_size=0.1, pthresh=0.2)
    res = run_examples(normal, ShapesDataset("test", seed=0), [0, 1, 2], settings,
                       out_dir=tmp_path, dataset_name="shapes", transfer_models={"l": linf})
    assert res["transfer_source_conf"].shape == (3, 3, 2)
    assert (res["transfer_pred"][range(3), range(3)] == -1).all()
    assert np.isnan(res["transfer_baseline_target_conf"][range(3), range(3)]).all()
    spots = torch.from_numpy(res["blind_spots"][0, 2][None])  # float, as LST returned it
    probs = probabilities(linf, spots)[0]
    assert res["transfer_source_conf"][0, 2, 1] == pytest.approx(probs[0].item(), abs=1e-6)
    assert res["transfer_target_conf"][0, 2, 1] == pytest.approx(probs[2].item(), abs=1e-6)
    assert res["transfer_pred"][0, 2, 1] == probs.argmax().item()
