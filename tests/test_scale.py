"""Long runs: resume after SIGKILL, independence of batch size and process count, torchrun."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lst import LSTSettings
from lst.experiments import run_full_eval
from lst.results import load_results
from lst.runstore import ResumeError, RunStore
from lst.shapes import ShapesDataset
from tests.conftest import stem_for
from models import load_model

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "10", "--rounds", "3",
        "--get_final_imgs", "--adv_pert", "--pthresh", "0.2", "--step_size", "0.02"]


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
    for key in ("source_indices", "target_indices", "kept"):
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("init_confs", "final_confs", "l2", "ssim", "accept_rate"):
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0)
    np.testing.assert_allclose(a["final_images"].astype(int), b["final_images"].astype(int),
                               atol=1 if atol else 0)
    for key in a["hull_stats"]:
        np.testing.assert_allclose(a["hull_stats"][key], b["hull_stats"][key], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run(command(out, "--iters", "30", "--batch_size", "4"))
    return results_of(out, "--iters", "30")


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = command(tmp_path, "--iters", "30", "--batch_size", "4")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=ROOT)
    parts = tmp_path / f"{stem('--iters', '30')}_fulleval_parts"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(parts.glob("pairs_*.pkl"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list(parts.glob("pairs_*.pkl"))
    assert 2 <= len(done) < 8  # 30 pairs in batches of 4
    assert not (tmp_path / f"{stem('--iters', '30')}_fulleval_dict.pkl").exists()
    resumed = run(cmd)
    assert "resuming" in resumed.stderr and "taking over" in resumed.stderr  # the killed run's lock
    assert_same(results_of(tmp_path, "--iters", "30"), reference)
    assert not parts.exists()  # cleaned up after the final write


def test_runs_with_other_arguments_never_share_files(tmp_path):
    """A killed run with seed 1 leaves its parts; a run with seed 0 in the same folder has its
    own name and files, and the seed-1 run then resumes its own parts untouched."""
    seed1 = ["--iters", "30", "--batch_size", "4", "--seed", "1"]
    parts = tmp_path / f"{stem(*seed1)}_fulleval_parts"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command(tmp_path, *seed1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    while proc.poll() is None and not list(parts.glob("pairs_*.pkl")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = {p.name: p.read_bytes() for p in parts.glob("pairs_*.pkl")}
    assert saved
    other = run(command(tmp_path, "--iters", "30", "--batch_size", "4"))
    assert "resuming" not in other.stderr
    assert {p.name: p.read_bytes() for p in parts.glob("pairs_*.pkl")} == saved
    resumed = run(command(tmp_path, *seed1))
    assert "resuming" in resumed.stderr and not parts.exists()
    seed0, seed1_results = results_of(tmp_path, "--iters", "30"), results_of(tmp_path, *seed1)
    assert not np.array_equal(seed0["source_indices"], seed1_results["source_indices"])


def test_batch_size_does_not_change_results(tmp_path, reference):
    run(command(tmp_path, "--iters", "30", "--batch_size", "8"))
    assert_same(results_of(tmp_path, "--iters", "30"), reference, atol=1e-4)


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
