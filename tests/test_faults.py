"""Faults, bad values, sweeps and concurrent runs: one clear line, the right exit code, and
results that are never mixed, overwritten or lost (docs/design.md, "Bad input", "The run store").

Every command-line case checks the exit code, the one line on stderr, that no traceback is
printed, and the output folder's listing before and after.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lst
import print_tables
from lst.data import DATASETS
from lst.results import load_results
from tests.conftest import run_cli, small_cnn, stem_for

ROOT = Path(__file__).resolve().parents[1]
RUN = ["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "8", "--rounds", "2",
       "--iters", "20", "--batch_size", "4", "--get_final_imgs"]
SWEEP = ("0.05", "0.2", "0.5")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(*args, out_dir=None):
    """The command line, run in this process with one thread (as ENV runs the processes of
    `start`, so their results compare bit for bit); returns its code, stdout and stderr."""
    return run_cli(*args, *([] if out_dir is None else ["--out_dir", out_dir]), cwd=ROOT,
                   env={"OMP_NUM_THREADS": "1"})


def start(*args, out_dir):
    argv = [sys.executable, str(ROOT / "level_set_traversal.py"), *args, "--out_dir", str(out_dir)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT)


def listing(folder):
    folder = Path(folder)
    if not folder.exists():
        return None
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def error_line(proc, code=2, prefix="error: "):
    """The process exited with `code` and said so in exactly one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # what a terminal shows: progress bars redraw a line after a carriage return
    lines = [line.split("\r")[-1] for line in proc.stderr.strip().splitlines()]
    said = [line for line in lines if line.startswith(prefix)]
    assert len(said) == 1 and lines[-1] == said[0], proc.stderr[-2000:]
    return said[0]


def only_line(proc, code=2):
    """A fault found before any work: exactly one line on stderr, nothing else."""
    line = error_line(proc, code)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return line


def results(out_dir, *args):
    stem = stem_for(list(args))
    return load_results(Path(out_dir) / f"{stem}_fulleval_dict.pkl")["results"]


def assert_equal_results(a, b):
    for key in ("source_indices", "target_indices", "kept", "init_confs", "final_confs", "l2",
                "ssim", "accept_rate", "final_images"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in a["hull_stats"]:
        np.testing.assert_array_equal(a["hull_stats"][key], b["hull_stats"][key], err_msg=key)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three runs that differ only in --pthresh, one after the other into one folder."""
    out = tmp_path_factory.mktemp("sweep")
    for p in SWEEP:
        proc = cli(*RUN, "--pthresh", p, out_dir=out)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return out


# -- run identity ---------------------------------------------------------------------------

def test_a_pthresh_sweep_keeps_three_results_files_and_three_rows(sweep, capsys):
    files = sorted(sweep.glob("*_fulleval_dict.pkl"))
    assert len(files) == 3 and len(list(sweep.glob("*_all_confs.pkl"))) == 3
    assert listing(sweep) == sorted(p.name for p in sweep.iterdir())  # no parts folder left
    saved = {load_results(f)["args"]["run_key"]["settings"]["pthresh"] for f in files}
    assert saved == {0.05, 0.2, 0.5}
    assert print_tables.main([str(sweep), "--format", "github"]) == 0
    printed = capsys.readouterr().out
    for p in SWEEP:
        rows = [line for line in printed.splitlines() if f"pthresh={float(p):g} " in line]
        assert len(rows) == 3, printed  # one in each of Tables 1, 2 and 2b
        n = [(row.split("|")[3].strip(), row.split("|")[4].strip()) for row in rows]
        assert n == [("8", "16"), ("8", "8"), ("8", "8")]  # sources; kept pairs, triangles, chords


def test_the_same_run_again_is_already_done_and_overwrite_recomputes(sweep):
    path = sweep / f"{stem_for([*RUN, '--pthresh', '0.2'])}_fulleval_dict.pkl"
    before = path.stat().st_mtime_ns, listing(sweep)
    again = cli(*RUN, "--pthresh", "0.2", out_dir=sweep)
    assert again.returncode == 0 and "already done" in again.stdout, again.stderr[-2000:]
    assert (path.stat().st_mtime_ns, listing(sweep)) == before  # nothing recomputed or added
    first = load_results(path)["results"]
    redo = cli(*RUN, "--pthresh", "0.2", "--overwrite", out_dir=sweep)
    assert redo.returncode == 0 and "already done" not in redo.stdout
    assert path.stat().st_mtime_ns != before[0] and listing(sweep) == before[1]
    assert_equal_results(load_results(path)["results"], first)


def test_load_dict_finds_the_results_of_the_same_flags(tmp_path):
    run = ["smallcnn-normal", "shapes", "--examples", "--iters", "4", "--target_classes", "0",
           "1", "2"]
    assert cli(*run, out_dir=tmp_path).returncode == 0
    redraw = cli(*run, "--load_dict", out_dir=tmp_path)
    assert redraw.returncode == 0 and "redrew" in redraw.stdout, redraw.stderr[-2000:]
    other = cli(*run, "--pthresh", "0.3", "--load_dict", out_dir=tmp_path)  # never made
    assert "cannot read results file" in only_line(other)


def test_a_results_file_of_other_weights_is_not_overwritten(tmp_path):
    """Weights changed under an unchanged name (timm's cache, say): same file name, other
    weights fingerprint. The run refuses instead of calling it done or overwriting it."""
    weights = tmp_path / "w.pt"
    weights.write_bytes((ROOT / "models/weights/smallcnn-normal.pt").read_bytes())
    run = [*RUN, "--load_model_path", str(weights)]
    out = tmp_path / "out"
    assert cli(*run, out_dir=out).returncode == 0
    path = out / f"{stem_for(run)}_fulleval_dict.pkl"
    blob = load_results(path)
    blob["args"]["run_key"]["weights"] = "0" * 16  # as if made by other weights
    from lst.results import save_results
    save_results(path, blob["args"], blob["results"])
    before = listing(out), path.read_bytes()
    proc = cli(*run, out_dir=out)
    assert "holds another run (weights)" in only_line(proc) and "--overwrite" in proc.stderr
    assert (listing(out), path.read_bytes()) == before


def test_an_examples_run_is_keyed_by_the_example_images_it_used(tmp_path):
    """The saved {dataset}_target_{class}.png decide an examples run's results: a rerun with
    other images there is another run, refused until --overwrite."""
    argv = ["smallcnn-normal", "shapes", "--examples", "--target_classes", "0", "1", "2",
            "--iters", "4"]
    assert cli(*argv, out_dir=tmp_path).returncode == 0
    again = cli(*argv, out_dir=tmp_path)
    assert again.returncode == 0 and "already done" in again.stdout
    (path,) = tmp_path.glob("*_examples_dict.pkl")
    used = load_results(path)["args"]["run_key"]["example_images"]
    assert len(used) == 3 and all(used)
    other = tmp_path / "shapes_target_1.png"
    other.write_bytes((tmp_path / "shapes_target_2.png").read_bytes())
    line = only_line(cli(*argv, out_dir=tmp_path))
    assert "holds another run (example_images)" in line
    assert cli(*argv, "--overwrite", out_dir=tmp_path).returncode == 0
    assert load_results(path)["args"]["run_key"]["example_images"][1] == used[2]


def test_a_run_that_computes_lpips_is_another_run_than_one_without(tmp_path, monkeypatch):
    argv = ["smallcnn-normal", "shapes", "--examples", "--iters", "4"]
    without = stem_for(argv)
    weights = tmp_path / "alexnet.pth"
    weights.write_bytes(b"the file's presence decides whether LPIPS is computed")
    monkeypatch.setenv("LST_ALEXNET_WEIGHTS", str(weights))
    assert stem_for(argv) != without


# -- concurrent runs --------------------------------------------------------------------------

def test_two_runs_at_once_with_other_pthresh_each_equal_their_run_alone(sweep, tmp_path):
    first = start(*RUN, "--pthresh", "0.05", out_dir=tmp_path)
    second = start(*RUN, "--pthresh", "0.5", out_dir=tmp_path)
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    for p in ("0.05", "0.5"):
        assert_equal_results(results(tmp_path, *RUN, "--pthresh", p),
                             results(sweep, *RUN, "--pthresh", p))
    assert not list(tmp_path.glob("*_parts"))


def test_the_same_run_twice_at_once_one_refuses_and_no_folder_is_left(sweep, tmp_path):
    stem = stem_for([*RUN, "--pthresh", "0.2"])
    lock = tmp_path / f"{stem}_fulleval_parts" / "lock"
    first = start(*RUN, "--pthresh", "0.2", out_dir=tmp_path)
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.02)
    second = cli(*RUN, "--pthresh", "0.2", out_dir=tmp_path)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    if second.returncode == 0:  # it started after the first had finished
        assert "already done" in second.stdout
    else:
        line = only_line(second)
        assert f"PID {first.pid}" in line and "in use" in line
    assert not list(tmp_path.glob("*_parts"))
    assert_equal_results(results(tmp_path, *RUN, "--pthresh", "0.2"),
                         results(sweep, *RUN, "--pthresh", "0.2"))


# -- faults -----------------------------------------------------------------------------------

SIGNALLING = ["tests.signalling:smallcnn", *RUN[1:], "--pthresh", "0.05", "--iters", "60"]


@pytest.mark.kernels
def test_ctrl_c_exits_130_in_one_line_and_the_same_command_resumes(tmp_path):
    """Ctrl-C at a known point: the model (tests/signalling.py) sends SIGINT to its process on
    its 100th forward pass, in the second batch of 4 pairs (62 passes a batch, the first batch
    saved at pass 65), on any machine speed."""
    env = {**ENV, "LST_TEST_SIGNAL": "INT", "LST_TEST_SIGNAL_AT": "100"}
    argv = [sys.executable, str(ROOT / "level_set_traversal.py"), *SIGNALLING, "--out_dir",
            str(tmp_path)]
    # a shell that starts the tests in the background passes SIGINT on ignored, and Python then
    # keeps ignoring it: the run under test gets the default disposition, as at a terminal
    interrupted = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT,
                                 timeout=300,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = error_line(interrupted, code=130, prefix="interrupted: ")
    parts = tmp_path / f"{stem_for(SIGNALLING)}_fulleval_parts"
    assert len(list(parts.glob("pairs_*.pkl"))) == 1 and "4 finished pairs are saved" in line
    assert "the same command resumes" in line and not list(parts.glob(".*.tmp"))
    resumed = cli(*SIGNALLING, out_dir=tmp_path)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr
    alone = cli(*SIGNALLING, out_dir=tmp_path / "alone")
    assert alone.returncode == 0
    assert_equal_results(results(tmp_path, *SIGNALLING), results(tmp_path / "alone", *SIGNALLING))


@contextlib.contextmanager
def mounted_tmpfs(folder, options):
    """A tmpfs mounted with `options` on `folder` for the duration; skip where mounting needs a
    privilege this user lacks."""
    folder.mkdir(exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs ({options}) needs root (CI runs as root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 128 KiB filesystem: room for two batches of parts, not for the whole run."""
    with mounted_tmpfs(tmp_path / "small_disk", "size=128k") as folder:
        yield folder


@pytest.mark.kernels
def test_a_full_disk_keeps_the_saved_parts_and_a_rerun_resumes(small_disk, sweep, tmp_path):
    out = small_disk / "out"
    proc = cli(*RUN, "--pthresh", "0.2", out_dir=out)
    line = error_line(proc)
    assert "No space left on device" in line and "the same command resumes" in line
    parts = out / f"{stem_for([*RUN, '--pthresh', '0.2'])}_fulleval_parts"
    saved = sorted(p.name for p in parts.glob("pairs_*.pkl"))
    assert saved and f"{4 * len(saved)} finished pairs are saved" in line
    assert not [p for p in listing(out) if p.endswith(".tmp")]  # no half-written file
    assert not list(out.glob("*_fulleval_dict.pkl"))
    moved = tmp_path / "bigger"  # the user frees space: here, moves the folder to a bigger disk
    subprocess.run(["cp", "-r", str(out), str(moved)], check=True)
    resumed = cli(*RUN, "--pthresh", "0.2", out_dir=moved)
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-2000:]
    assert_equal_results(results(moved, *RUN, "--pthresh", "0.2"),
                         results(sweep, *RUN, "--pthresh", "0.2"))


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "read_only"
    if os.geteuid() != 0:  # permissions keep a user out; root needs a read-only filesystem
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with mounted_tmpfs(folder, "ro,size=64k"):
        yield folder


def test_an_unwritable_out_dir_stops_before_the_model_is_loaded(read_only_dir, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not weights")  # loading it first would fail with another message
    proc = cli(*RUN, "--load_model_path", str(broken), out_dir=read_only_dir)
    assert "is not writable" in only_line(proc) and str(read_only_dir) in proc.stderr
    assert listing(read_only_dir) == []


def test_an_out_dir_under_a_file(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    proc = cli(*RUN, out_dir=a_file / "out")
    assert "cannot create the output folder" in only_line(proc)
    assert a_file.read_text() == "keep me" and listing(tmp_path) == ["a_file"]


@pytest.fixture
def cifar_with_a_corrupt_image(tmp_path):
    root = tmp_path / "cifar"
    rng = np.random.default_rng(0)
    for c, name in enumerate(DATASETS["cifar10"].class_names):
        (root / "test" / name).mkdir(parents=True)
        for k in range(2):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "test" / name / f"{k}.png")
    corrupt = root / "test" / "automobile" / "0.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root, corrupt


def test_an_unreadable_image_is_named(cifar_with_a_corrupt_image, tmp_path):
    root, corrupt = cifar_with_a_corrupt_image
    out = tmp_path / "out"
    proc = cli("resnet20-normal", "cifar10", "--cifar_path", str(root), "--examples", "--iters",
               "2", "--target_classes", "1", "2", "3", out_dir=out)
    line = only_line(proc)
    assert f"cannot read image {corrupt}" in line
    assert listing(out) is None


def test_a_missing_data_folder_is_not_created(tmp_path):
    missing = tmp_path / "no" / "such" / "cifar"
    proc = cli("resnet20-normal", "cifar10", "--cifar_path", str(missing), "--examples",
               out_dir=tmp_path / "out")
    assert "does not exist" in only_line(proc)
    assert listing(tmp_path) == []


BAD_VALUES = [
    (["--step_size", "nan"], "--step_size must be a finite number"),
    (["--step_size", "inf"], "--step_size must be a finite number"),
    (["--adv_pert", "--adv_step_size", "nan"], "--adv_step_size must be a finite number"),
    (["--adv_step_size", "nan"], "--adv_step_size must be a finite number"),
    (["--init_noise", "-5"], "--init_noise must be >= 0"),
    (["--width_distances", "-1", "nan"], "--width_distances must be positive finite"),
    (["--pthresh", "nan"], "--pthresh must be a finite number"),
    (["--target_classes", "0", "0", "1", "2"], r"class\(es\) \[0\] more than once"),
    (["--load_dict"], "does not go with --full_eval"),
]


@pytest.mark.parametrize("extra,message", BAD_VALUES, ids=[" ".join(e) for e, _ in BAD_VALUES])
def test_values_that_mean_nothing_are_refused(tmp_path, extra, message):
    import re

    out = tmp_path / "out"
    proc = cli(*RUN, *extra, out_dir=out)
    assert re.search(message, only_line(proc)), proc.stderr
    assert listing(out) is None


# -- the library ------------------------------------------------------------------------------

class NaNModel(nn.Module):
    def forward(self, x):
        logits = x.flatten(1)[:, :4].clone()
        logits[1] = float("nan")
        return logits


def library_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)


@pytest.mark.parametrize("case,message", [
    ("nan source", "sources hold NaN or inf values"),
    ("inf target", "targets hold NaN or inf values"),
    ("above one", r"sources must be in \[0,1\]"),
    ("uint8", "sources must be float images"),
    ("one-channel target", "must have the same shape"),
    ("label out of range", "labels must be classes of the model's 10 outputs"),
])
def test_the_library_refuses_inputs_that_mean_nothing(case, message):
    model = small_cnn()
    x, t = library_inputs()
    y = torch.tensor([0, 1, 2])
    if case == "nan source":
        x[1, 0, 0, 0] = float("nan")
    elif case == "inf target":
        t[2, 0, 0, 0] = float("inf")
    elif case == "above one":
        x = x * 1.01 + 0.01
    elif case == "uint8":
        x = (x * 255).to(torch.uint8)
    elif case == "one-channel target":
        t = t[:, :1]
    elif case == "label out of range":
        y = torch.tensor([0, 1, 12])
    with pytest.raises(ValueError, match=message):
        lst.level_set_traversal(model, x, y, t, iters=2)


def test_images_within_rounding_of_the_unit_interval_are_used_clamped():
    model = small_cnn(gain=100.0)
    x, t = library_inputs()
    y = lst.predict(model, x)[0]
    nudged = x.clone()
    nudged[0, 0, 0, 0], nudged[1, 0, 0, 0] = -5e-7, 1 + 5e-7
    clamped = nudged.clamp(0, 1)
    a = lst.level_set_traversal(model, nudged, y, t, iters=3)
    b = lst.level_set_traversal(model, clamped, y, t, iters=3)
    torch.testing.assert_close(a.init_confs, b.init_confs, rtol=0, atol=0)  # p0 at the used image
    torch.testing.assert_close(a.final_images, b.final_images, rtol=0, atol=0)


def test_a_model_with_non_finite_outputs_is_named_by_sample():
    x, t = library_inputs()
    with pytest.raises(ValueError, match=r"not finite at sample\(s\) \[11\]"):
        lst.level_set_traversal(NaNModel(), x, torch.tensor([0, 1, 2]), t, iters=2,
                                sample_ids=[10, 11, 12])
