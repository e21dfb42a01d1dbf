"""Long runs: resume after SIGKILL, independence of batch size and process count, torchrun."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lst import LSTSettings
from lst.experiments import run_full_eval
from lst.results import load_header, load_results
from lst.runstore import ResumeError, RunStore
from lst.shapes import ShapesDataset
from tests.conftest import ROUNDING_MARGIN, acceptance_margin, stem_for
from models import load_model

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "10", "--rounds", "3",
        "--get_final_imgs", "--adv_pert", "--pthresh", "0.2", "--step_size", "0.02",
        "--get_confs_over_path", "--log_step", "1"]  # every iterate's confidence: the margin


def stem(*extra):
    return stem_for(ARGS + list(extra))


def command(out_dir, *extra, launcher=None):
    launcher = launcher or [sys.executable]
    return [*launcher, str(ROOT / "level_set_traversal.py"), *ARGS, "--out_dir", str(out_dir),
            *extra]


def run(cmd, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT, **kw)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def results_of(out_dir, *extra):
    return load_results(Path(out_dir) / f"{stem(*extra)}_fulleval_dict.pkl")["results"]


def assert_same(a, b, atol=0.0):
    """Equality (atol 0: the same batches, so the same arithmetic) or closeness: runs in other
    batches or processes differ by float32 rounding, which moves these walks (every decision
    far from the threshold, see `reference`) by under 1e-5 (measured: 5e-6 on the slowest
    kernels); atol 1e-4, one 8-bit level for the saved images, and 10 atol for SSIM, whose
    windows of low variance magnify a pixel's rounding (measured: 7e-5)."""
    for key in ("source_indices", "target_indices", "kept"):
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("init_confs", "final_confs", "l2", "ssim", "accept_rate"):
        np.testing.assert_allclose(a[key], b[key], atol=10 * atol if key == "ssim" else atol,
                                   rtol=0)
    np.testing.assert_allclose(a["final_images"].astype(int), b["final_images"].astype(int),
                               atol=1 if atol else 0)
    for key in a["hull_stats"]:
        np.testing.assert_allclose(a["hull_stats"][key], b["hull_stats"][key], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run(command(out, "--iters", "30", "--batch_size", "4"))
    results = results_of(out, "--iters", "30")
    assert acceptance_margin(results, pthresh=0.2) > ROUNDING_MARGIN  # no decision near p0 - 0.2
    return results


SIGNALLING = ["tests.signalling:smallcnn", *ARGS[1:]]  # smallcnn-normal, signals on a known pass


def killed_at(call, out_dir, *extra):
    """Run SIGNALLING until its model SIGKILLs the process on its `call`-th forward pass (32
    passes a batch of 4 pairs at --iters 30; the first batch is saved at pass 35)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "LST_TEST_SIGNAL": "KILL", "LST_TEST_SIGNAL_AT": str(call)}
    proc = subprocess.run([sys.executable, str(ROOT / "level_set_traversal.py"), *SIGNALLING,
                           "--out_dir", str(out_dir), *extra], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.kernels
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference):
    extra = ["--iters", "30", "--batch_size", "4"]
    killed_at(80, tmp_path, *extra)  # in the third batch
    parts = tmp_path / f"{stem_for(SIGNALLING + extra)}_fulleval_parts"
    assert len(list(parts.glob("pairs_*.pkl"))) == 2  # 30 pairs in batches of 4
    assert not list(tmp_path.glob("*_fulleval_dict.pkl"))
    resumed = run([sys.executable, str(ROOT / "level_set_traversal.py"), *SIGNALLING,
                   "--out_dir", str(tmp_path), *extra])
    assert "resuming" in resumed.stderr and "taking over" in resumed.stderr  # the killed run's lock
    # the same model under another name: the same numbers as the uninterrupted reference run
    (path,) = tmp_path.glob("*_fulleval_dict.pkl")
    assert_same(load_results(path)["results"], reference)
    assert not parts.exists()  # cleaned up after the final write


def test_runs_with_other_arguments_never_share_files(tmp_path):
    """A killed run with seed 1 leaves its parts; a run with seed 0 in the same folder has its
    own name and files, and the seed-1 run then resumes its own parts untouched."""
    seed1 = ["--iters", "30", "--batch_size", "4", "--seed", "1"]
    parts = tmp_path / f"{stem_for(SIGNALLING + seed1)}_fulleval_parts"
    killed_at(50, tmp_path, *seed1)  # in the second batch
    seed0 = ["--iters", "30", "--batch_size", "4"]
    saved = {p.name: p.read_bytes() for p in parts.glob("pairs_*.pkl")}
    assert len(saved) == 1
    other = run([sys.executable, str(ROOT / "level_set_traversal.py"), *SIGNALLING,
                 "--out_dir", str(tmp_path), *seed0])
    assert "resuming" not in other.stderr
    assert {p.name: p.read_bytes() for p in parts.glob("pairs_*.pkl")} == saved
    resumed = run([sys.executable, str(ROOT / "level_set_traversal.py"), *SIGNALLING,
                   "--out_dir", str(tmp_path), *seed1])
    assert "resuming" in resumed.stderr and not parts.exists()
    files = {stem_for(SIGNALLING + s): s for s in (seed0, seed1)}
    seed0_results, seed1_results = (
        load_results(tmp_path / f"{stem}_fulleval_dict.pkl")["results"] for stem in files)
    assert not np.array_equal(seed0_results["source_indices"], seed1_results["source_indices"])


@pytest.mark.kernels
def test_batch_size_does_not_change_results(tmp_path, reference):
    run(command(tmp_path, "--iters", "30", "--batch_size", "8"))
    assert_same(results_of(tmp_path, "--iters", "30"), reference, atol=1e-4)


@pytest.mark.kernels
def test_two_processes_with_gloo_give_the_single_process_result(tmp_path, reference):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    proc = run(command(tmp_path, "--iters", "30", "--batch_size", "4", launcher=launcher))
    assert "on 2 process(es)" in proc.stdout
    assert_same(results_of(tmp_path, "--iters", "30"), reference, atol=1e-4)


def test_other_weights_under_the_same_name_do_not_resume(tmp_path, caplog):
    model, _ = load_model("smallcnn-normal", "shapes")
    dataset = ShapesDataset("test", seed=0)
    settings = LSTSettings(iters=3, log_step=1)
    kwargs = dict(num_samples=4, rounds=2, batch_size=4, store=RunStore(tmp_path, "run"))
    first, _ = run_full_eval(model, dataset, settings, **kwargs)
    with caplog.at_level("INFO", logger="lst.runstore"):
        again, _ = run_full_eval(model, dataset, settings, **kwargs)  # same weights: resumes
    assert "resuming" in caplog.text
    np.testing.assert_array_equal(first["final_confs"], again["final_confs"])
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # retrained weights, same model name
    with pytest.raises(ResumeError, match=r"other arguments \(weights\)"):
        run_full_eval(model, dataset, settings, **kwargs)


def test_an_error_of_rank_0_opening_the_store_stops_every_rank_with_its_line(tmp_path):
    """Rank 0 cannot open the run's lock (here it is a folder): the other rank must not wait for
    it forever; both stop with the same one line, well within the timeout."""
    extra = ["--iters", "2", "--batch_size", "4"]
    parts = tmp_path / "out" / f"{stem(*extra)}_fulleval_parts"
    (parts / "lock").mkdir(parents=True)
    logs = tmp_path / "logs"  # each rank's stderr in a file of its own (they would interleave)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "--log-dir", str(logs), "--redirects", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command(tmp_path / "out", *extra, launcher=launcher), capture_output=True,
                          text=True, env=env, timeout=240, cwd=ROOT)
    assert proc.returncode != 0
    stderr = sorted(logs.rglob("stderr.log"))
    assert len(stderr) == 2, proc.stderr[-3000:]
    said = [f.read_text().strip().splitlines() for f in stderr]
    assert all(len(lines) == 1 for lines in said) and said[0] == said[1], said
    assert said[0][0].startswith("error: cannot open the run's files") and "Is a directory" in said[0][0]


def test_a_filesystem_without_locks_is_named_in_one_line(tmp_path, monkeypatch):
    import errno
    import fcntl

    from lst.results import ResultsError

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ResultsError, match=r"does not support file locks .*--out_dir"):
        with RunStore(tmp_path, "run").open():
            pass


@pytest.mark.kernels
def test_done_pairs_come_from_part_headers_and_parts_of_before_headers_resume(tmp_path):
    """Which pairs are done is read from the parts' headers (a part whose arrays are cut short
    still counts); a part saved before headers existed (one pickle, float32 blind spots) is
    merged into the same results as a run without it."""
    from lst.results import save_results

    model, _ = load_model("smallcnn-normal", "shapes")
    dataset = ShapesDataset("test", seed=0)
    settings = LSTSettings(iters=3, log_step=1)
    kwargs = dict(num_samples=4, rounds=2, batch_size=4, get_final_imgs=True)
    alone, _ = run_full_eval(model, dataset, settings, **kwargs)
    store = RunStore(tmp_path, "run")
    run_full_eval(model, dataset, settings, store=store, **kwargs)  # no key: the parts stay
    parts = sorted(store.parts_dir.glob("pairs_*.pkl"))
    assert len(parts) == 2
    key = load_header(parts[0])["run_key"]  # the library's own key (lst.identity.run_key)
    first = store.load_parts(key)[0]
    old = dict(first, final_images=first["final_images"].astype(np.float32) / 255)
    save_results(parts[0], key, old)  # the old format: one pickle {"args": key, "results": part}
    with open(parts[1], "r+b") as f:
        f.truncate(parts[1].stat().st_size // 2)
    assert sorted(store.done_pair_ids(key)) == list(range(8))
    parts[1].unlink()  # the cut part cannot be merged: remove it, as after a crash it would be
    resumed, _ = run_full_eval(model, dataset, settings, store=store, **kwargs)
    for name in ("final_confs", "final_images", "l2"):
        np.testing.assert_array_equal(resumed[name], alone[name])
    for name in alone["hull_stats"]:
        np.testing.assert_array_equal(resumed["hull_stats"][name], alone["hull_stats"][name])


def test_the_library_key_holds_restarts_and_judges_and_merging_refuses_other_fields(tmp_path):
    """A full_eval from Python without a key resumes only parts of the same run: restarts and
    judges are in the key the library makes. Parts that hold other fields are refused, not
    merged into rows left unwritten."""
    from lst.experiments import _merge_parts

    model, _ = load_model("smallcnn-normal", "shapes")
    dataset = ShapesDataset("test", seed=0)
    settings = LSTSettings(iters=2, log_step=1)
    kwargs = dict(num_samples=4, rounds=2, batch_size=4)
    store = RunStore(tmp_path, "run")
    run_full_eval(model, dataset, settings, store=store, **kwargs)  # no key: the parts stay
    for other, named in ((dict(restarts=2), "restarts"),
                         (dict(transfer_models={"other": model}), "transfer_models")):
        with pytest.raises(ResumeError, match=named):
            run_full_eval(model, dataset, settings, store=store, **kwargs, **other)
    key = load_header(sorted(store.parts_dir.glob("pairs_*.pkl"))[0])["run_key"]
    parts = store.load_parts(key)
    fewer = dict(parts[-1])
    fewer.pop("ssim")
    with pytest.raises(ResumeError, match="different fields .*ssim"):
        _merge_parts([*parts[:-1], fewer], 8)
