import os
import pickle

import numpy as np
import pytest
import torch

from lst.results import ResultsError, atomic_write, load_results, results_stem, save_results


def test_round_trip_of_plain_containers_and_arrays(tmp_path):
    results = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, 2.5, "x", None, True],
               "c": {"d": np.int64(3), "e": torch.ones(2, dtype=torch.float16)},
               "f": np.zeros(3, dtype=np.uint8), "g": np.float32(0.5)}
    path = save_results(tmp_path / "r.pkl", {"model": "m", "classes": (1, 2)}, results)
    loaded = load_results(path)
    assert loaded["args"] == {"model": "m", "classes": [1, 2]}
    r = loaded["results"]
    np.testing.assert_array_equal(r["a"], results["a"])
    assert r["c"]["e"].dtype == np.float16 and r["f"].dtype == np.uint8
    assert r["b"] == [1, 2.5, "x", None, True] and r["g"] == np.float32(0.5)


def test_objects_are_refused_when_saving(tmp_path):
    with pytest.raises(TypeError):
        save_results(tmp_path / "r.pkl", {}, {"f": lambda x: x})
    with pytest.raises(TypeError):
        save_results(tmp_path / "r.pkl", {}, {"o": np.array([object()])})
    assert not list(tmp_path.iterdir())


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"args": {}, "results": {"x": Payload(marker)}}))
    with pytest.raises(ResultsError, match="evil.pkl.*posix.system|evil.pkl.*refusing"):
        load_results(evil)
    assert not marker.exists()


def test_truncated_foreign_and_missing_files_name_the_file(tmp_path):
    good = save_results(tmp_path / "good.pkl", {}, {"a": np.arange(1000)})
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ResultsError, match="truncated.pkl"):
        load_results(truncated)
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ResultsError, match="foreign.pkl is not a results file"):
        load_results(foreign)
    with pytest.raises(ResultsError, match="missing.pkl"):
        load_results(tmp_path / "missing.pkl")


def test_a_crash_while_writing_leaves_the_old_file(tmp_path):
    path = save_results(tmp_path / "r.pkl", {}, {"v": 1})

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert load_results(path)["results"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.pkl"]


def test_file_names_follow_the_paper():
    kw = dict(desc="run1_", model="resnet50-normal", dataset="imagenet", step_size=1e-2, iters=400)
    assert (results_stem(**kw, adv_step_size=2e-3, classes=[99, 199])
            == "run1_resnet50-normal_imagenet_99-199_stepsize-0.01_400iters_advstepsize-0.002")
    assert (results_stem(**kw, adv_step_size=None, num_samples=1000)
            == "run1_resnet50-normal_imagenet_1000samples_stepsize-0.01_400iters_advstepsize-0")
