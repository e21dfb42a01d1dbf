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


def test_a_separate_array_lives_in_its_own_file_and_comes_back_memory_mapped(tmp_path):
    """A full_eval's final_images go to {stem}_final_images.npy: reading the pickle (the
    tables, "already done") never reads them; load_results maps them back lazily."""
    images = np.random.default_rng(0).integers(0, 256, (50, 5, 3, 64, 64), dtype=np.uint8)
    path = save_results(tmp_path / "r.pkl", {"m": 1}, {"final_images": images,
                                                      "l2": np.ones((50, 5))},
                        separate=("final_images",))
    assert (tmp_path / "r_final_images.npy").is_file()
    assert path.stat().st_size < 10_000 < images.nbytes  # the pickle holds a reference only
    with open(path, "rb") as f:
        raw = pickle.load(f)["results"]
    assert raw["final_images"] == {"npy_file": "r_final_images.npy"}
    loaded = load_results(path)["results"]
    assert isinstance(loaded["final_images"], np.memmap)
    np.testing.assert_array_equal(loaded["final_images"], images)
    # saved again (say with changed args), a memmap is written as a plain array
    again = save_results(tmp_path / "s.pkl", {"m": 2}, loaded)
    np.testing.assert_array_equal(load_results(again)["results"]["final_images"], images)
    (tmp_path / "r_final_images.npy").unlink()
    with pytest.raises(ResultsError, match="cannot read .*r_final_images.npy, the final_images"):
        load_results(path)


def test_a_header_is_read_without_the_rest_of_the_file(tmp_path):
    from lst.results import load_header, load_with_header, save_with_header

    path = save_with_header(tmp_path / "p.pkl", {"pair_ids": np.arange(4)},
                            {"big": np.zeros((4, 3, 224, 224), dtype=np.uint8)})
    size = path.stat().st_size
    with open(path, "r+b") as f:  # cut the body short: the header still reads
        f.truncate(size // 2)
    np.testing.assert_array_equal(load_header(path)["pair_ids"], np.arange(4))
    with pytest.raises(ResultsError, match="truncated"):
        load_with_header(path)
