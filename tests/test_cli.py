"""The command line end to end on `shapes` with few iterations, and every bad input of
docs/design.md, "Bad input"."""
import os
import pickle
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

import level_set_traversal as cli
import print_tables
import lst.tables
from lst import LSTSettings
from lst.results import load_results
from models import load_model
from tests.conftest import run_cli, stem_for

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--iters", "6", "--log_step", "3", "--batch_size", "8"]
EXAMPLE_ARGS = ["smallcnn-normal", "shapes", "--examples", "--target_classes", "0", "1", "2", *FAST]
EXAMPLE_STEM = stem_for(EXAMPLE_ARGS)
RECORDING = ["--get_widths", "--get_images", "--get_confs_over_path", "--width_distances", "1", "2",
             "--width_directions", "8"]
RECORDED_STEM = stem_for(EXAMPLE_ARGS + RECORDING)  # the examples_dir fixture's run


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("examples")
    argv = [*EXAMPLE_ARGS, *RECORDING, "--out_dir", str(out)]
    assert cli.main(argv) == 0
    return out


def test_examples_stem_is_the_papers_with_a_run_id():
    assert re.fullmatch(r"smallcnn-normal_shapes_0-1-2_stepsize-0\.05_6iters_advstepsize-0_k[0-9a-f]{7}",
                        EXAMPLE_STEM), EXAMPLE_STEM
    # judges are part of a run's identity: their numbers are in its results file
    assert stem_for(EXAMPLE_ARGS + ["--transfer_models", "smallcnn-linf"]) != EXAMPLE_STEM


def test_examples_write_results_targets_and_figures(examples_dir):
    names = {p.name for p in examples_dir.iterdir()}
    stem = RECORDED_STEM
    assert stem != EXAMPLE_STEM  # recording settings are part of the run's identity
    assert {f"shapes_target_{c}.png" for c in range(3)} <= names
    figures = {f"{stem}_{f}.png" for f in
               ("grid", "star", "widths", "path", "confs_over_path", "triangles_source0",
                "triangles_source1", "triangles_source2")}
    assert figures <= names
    payload = load_results(examples_dir / f"{stem}_examples_dict.pkl")
    r = payload["results"]
    assert payload["args"]["model"] == "smallcnn-normal" and r["classes"] == [0, 1, 2]
    key, origin = payload["args"]["run_key"], payload["args"]["provenance"]
    assert key["settings"]["width_directions"] == 8 and len(key["weights"]) == 16
    assert origin["versions"]["torch"] and origin["started"] <= origin["finished"]
    assert r["blind_spots"].shape == (3, 3, 3, 32, 32)
    assert r["final_confs"].shape == (3, 3) and r["hull_confs"].shape == (3, 3, 66)
    assert r["widths"].shape == (3, 3, 2, 3, 2) and r["images_over_path"].dtype == np.uint8
    np.testing.assert_allclose(r["blind_spots"][1, 1], r["images"][1])  # diagonal: originals
    # the path as an animation: one frame per recorded iterate and one for the blind spot
    gif = Image.open(examples_dir / f"{stem}_path.gif")
    assert gif.format == "GIF" and gif.n_frames == len(r["log_iters"]) + 1
    assert (examples_dir / f"{stem}_path.gif").stat().st_size < 300_000
    off = ~np.eye(3, dtype=bool)
    assert (r["final_confs"][off] >= r["init_confs"][:, None].repeat(3, 1)[off] - 0.05).all()
    # each source's triangle (source, blind spot a, blind spot b): its vertices are the source
    # (grid row 0), blind spot a (last row, weights (0,1,0)) and blind spot b (row 10, (0,0,1))
    for m, (a, b) in enumerate(r["hull_pairs"]):
        s = 3 - a - b  # of the three sources, the one that is neither a nor b
        vertices = r["hull_confs"][s, m][[0, -1, 10]]
        expected = [r["init_confs"][s], r["final_confs"][s, a], r["final_confs"][s, b]]
        np.testing.assert_allclose(vertices, expected, atol=1e-3)
    assert np.isnan(r["hull_confs"][0, 0]).all()  # the pair (0, 1) holds source 0 itself


def test_load_dict_redraws_without_running_lst(examples_dir, monkeypatch):
    grid = examples_dir / f"{RECORDED_STEM}_grid.png"
    grid.unlink()

    def forbidden(*args, **kwargs):
        raise AssertionError("LST or the model was used")

    import lst.experiments
    import models
    monkeypatch.setattr(lst.experiments, "level_set_traversal", forbidden)
    monkeypatch.setattr(lst.experiments, "run_examples", forbidden)
    monkeypatch.setattr(models, "load_model", forbidden)
    argv = [*EXAMPLE_ARGS, *RECORDING, "--load_dict", "--out_dir", str(examples_dir)]
    assert cli.main(argv) == 0
    assert grid.is_file()


def test_saved_targets_are_reused(examples_dir, monkeypatch, tmp_path):
    import lst.experiments

    monkeypatch.setattr(lst.experiments, "select_targets",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("reselected")))
    argv = [*EXAMPLE_ARGS, "--out_dir", str(examples_dir), "--desc", "again_"]
    assert cli.main(argv) == 0
    first = load_results(examples_dir / f"{RECORDED_STEM}_examples_dict.pkl")["results"]
    again = load_results(examples_dir / f"again_{EXAMPLE_STEM}_examples_dict.pkl")["results"]
    np.testing.assert_array_equal(first["images"], again["images"])


def test_reused_targets_the_model_misclassifies_are_named(examples_dir, tmp_path, caplog):
    """A saved target image of another class (as when another model picked them) is left
    untraversed, and one warning says which class and what to do."""
    import shutil

    for c in (0, 1, 2):
        shutil.copy(examples_dir / f"shapes_target_{c}.png", tmp_path / f"shapes_target_{c}.png")
    shutil.copy(examples_dir / "shapes_target_1.png", tmp_path / "shapes_target_0.png")
    argv = [*EXAMPLE_ARGS, "--out_dir", str(tmp_path)]
    with caplog.at_level("WARNING"):
        assert cli.main(argv) == 0
    assert "class(es) [0]" in caplog.text and "--out_dir" in caplog.text
    r = load_results(tmp_path / f"{EXAMPLE_STEM}_examples_dict.pkl")["results"]
    assert not r["kept"][0, 1:].any() and r["kept"][1:, :].all()
    np.testing.assert_allclose(r["blind_spots"][0, 2], r["images"][0])


@pytest.mark.kernels
def test_full_eval_files_and_tables(tmp_path, capsys):
    argv = ["smallcnn-linf", "shapes", "--full_eval", "--num_samples", "12", "--rounds", "3",
            "--get_final_imgs", "--adv_pert", "--out_dir", str(tmp_path), *FAST]
    assert cli.main(argv) == 0
    stem = stem_for(argv)
    results = load_results(tmp_path / f"{stem}_fulleval_dict.pkl")["results"]
    all_confs = load_results(tmp_path / f"{stem}_all_confs.pkl")["results"]
    assert results["final_confs"].shape == (12, 3) and results["final_images"].shape == (12, 3, 3, 32, 32)
    assert (results["labels"][:, None] != results["target_labels"]).all()
    assert all_confs["hull_confs"].shape == (12, 3, 66)
    assert all_confs["limb_confs"].shape == (12, 3, 21) and all_confs["chord_confs"].shape == (12, 3, 21)
    assert set(results["segment_stats"]) == {f"{k}_kept_{d}" for k in ("limbs", "chords")
                                             for d in ("0.05", "0.1", "0.2")}
    assert set(results["seconds"]) == {"traversal", "restarts", "transfer", "triangles",
                                       "limbs_chords"}
    assert set(results["hull_stats"]) >= {"p_src", "mean", "frac_above_0.2", "edge_min"}
    # every triangle starts at its source: grid row 0 is the source's own confidence
    np.testing.assert_allclose(all_confs["hull_confs"][:, :, 0], results["init_confs"], atol=1e-4)
    capsys.readouterr()
    assert print_tables.main([str(tmp_path), "--format", "github"]) == 0
    printed = capsys.readouterr().out
    assert "SmallCNN (AT)" in printed and "Table 2" in printed and "LPIPS" in printed
    row1 = [line for line in printed.splitlines() if line.startswith("| SmallCNN")][0]
    cells = [c.strip() for c in row1.strip("|").split("|")]
    # n: sources, kept pairs
    assert len(cells) == 10 and cells[2:4] == ["12", str(int(results["kept"].sum()))]
    for cell in cells[4:9]:  # p0 .. SSIM are finite numbers (LPIPS may be n/a offline)
        mean, std = (float(v) for v in cell.split("±"))
        assert np.isfinite(mean) and np.isfinite(std)
    assert print_tables.main([str(tmp_path / "*_fulleval_dict.pkl")]) == 0


BAD_INPUTS = [
    (["nonsense-normal", "shapes", "--examples"], "unknown model.*smallcnn-normal"),
    (["smallcnn-normal", "mnist", "--examples"], "unknown dataset.*shapes"),
    (["wideresnet-normal", "cifar10", "--examples"], "--cifar_path"),
    (["wideresnet-normal", "cifar10", "--examples", "--cifar_path", "{tmp}/none"], "test/airplane"),
    (["resnet50-normal", "imagenet", "--examples", "--imgnet_path", "{tmp}/none"], "does not exist"),
    (["smallcnn-normal", "shapes", "--examples", "--target_classes", "0", "1", "12"], "out of range"),
    (["smallcnn-normal", "shapes", "--examples", "--step_size", "0"], "--step_size must be positive"),
    (["smallcnn-normal", "shapes", "--examples", "--iters", "-3"], "--iters must be >= 0"),
    (["smallcnn-normal", "shapes", "--examples", "--adv_step_size", "-1"], "--adv_step_size must be positive"),
    (["smallcnn-normal", "shapes", "--full_eval", "--num_workers", "-1"], "--num_workers must be >= 0"),
    (["smallcnn-normal", "shapes", "--examples", "--batch_size", "0"], "--batch_size must be positive"),
    (["smallcnn-normal", "shapes", "--examples", "--pthresh", "1.5"], r"\(0, 1\]"),
    (["smallcnn-normal", "shapes", "--examples", "--pthresh", "0"], r"\(0, 1\]"),
    (["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "3000"], "split has 2000"),
    (["smallcnn-normal", "shapes", "--examples", "--load_dict"], "cannot read results file"),
    (["smallcnn-normal", "shapes", "--examples", "--load_model_path", "{tmp}/w.pt"], "not a file"),
    (["smallcnn-normal", "shapes"], "one of the arguments --examples --full_eval is required"),
    (["smallcnn-normal", "shapes", "--examples", "--iters", "many"], "invalid int value"),
    (["smallcnn-normal", "shapes", "--examples", "--device", "cuda"], "no CUDA device"),
    (["smallcnn-normal", "shapes", "--examples", "--transfer_models", "smallcnn-normal"],
     "other models than the traversed one"),
    (["smallcnn-normal", "shapes", "--examples", "--transfer_models", "resnet20-normal"],
     "unknown model 'resnet20-normal' for shapes"),
    (["smallcnn-normal", "shapes", "--examples", "--diversity", "0.1"], "needs --restarts >= 2"),
    (["smallcnn-normal", "shapes", "--examples", "--restarts", "0"], "--restarts must be positive"),
    (["smallcnn-normal", "shapes", "--examples", "--get_layers", "--layers", "features.3", "head"],
     "--layers: layer 'head' is not a module of the model"),
    (["smallcnn-normal", "shapes", "--full_eval", "--matched_fractions", "0.5", "1"],
     r"--matched_fractions must be in \(0, 1\)"),
    (["smallcnn-normal", "shapes", "--examples", "--protocol", "paper"],
     "--protocol chooses the sources and targets of --full_eval"),
    (["smallcnn-normal", "shapes", "--full_eval", "--protocol", "paper", "--target_classes", "3"],
     "needs at least 2 --target_classes"),
    (["smallcnn-normal", "shapes", "--full_eval", "--protocol", "pairs", "--target_classes", "1",
      "2", "3", "--rounds", "3"], "a pool of 3 images has 2 targets per source"),
    (["smallcnn-normal", "shapes", "--examples", "--min_confidence", "1"],
     r"--min_confidence must be in \[0, 1\)"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a[2:]) or a[0] for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, argv, message):
    out = tmp_path / "out"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out_dir", str(out)]
    proc = run_cli(*argv, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    import re
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_weights_that_cannot_be_had_offline(tmp_path):
    val = tmp_path / "imagenet" / "val"
    for k in range(1000):
        (val / f"n{k:08d}").mkdir(parents=True)
    proc = run_cli("resnet50-normal", "imagenet", "--examples", "--imgnet_path",
                   str(tmp_path / "imagenet"), "--out_dir", str(tmp_path / "out"), cwd=tmp_path,
                   env={"HF_HOME": str(tmp_path / "hf")}, process=True)  # HF_HOME is read at import
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "timm/resnet50.tv_in1k" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_unsafe_results_file_is_refused_by_load_dict(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    name = f"{stem_for(['smallcnn-normal', 'shapes', '--examples'])}_examples_dict.pkl"
    (out / name).write_bytes(pickle.dumps({"args": {}, "results": Payload()}))
    proc = run_cli("smallcnn-normal", "shapes", "--examples", "--load_dict", "--out_dir", str(out),
                   cwd=tmp_path)
    assert proc.returncode == 2 and "not a safe results file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_print_tables_bad_input(tmp_path, capsys):
    assert print_tables.main([str(tmp_path)]) == 2
    (tmp_path / "x_fulleval_dict.pkl").write_bytes(b"garbage")
    assert print_tables.main([str(tmp_path)]) == 2
    assert "x_fulleval_dict.pkl" in capsys.readouterr().err


def test_protocol_paper_walks_the_example_images_through_derangements(tmp_path, capsys):
    """--protocol paper: the pool is the example images of --target_classes, every pool image
    is a source once and, in each round, a target once, never its own; the file says so, the
    protocol is part of the run's identity, and Table 2 prints over the paper's 64 points."""
    argv = ["smallcnn-normal", "shapes", "--full_eval", "--protocol", "paper", "--target_classes",
            "all", "--rounds", "3", "--get_final_imgs", "--out_dir", str(tmp_path), *FAST]
    assert cli.main(argv) == 0
    stem = stem_for(argv)
    assert "_10samples_" in stem and stem != stem_for(argv[:3] + argv[5:])  # another run than ours
    saved = load_results(tmp_path / f"{stem}_fulleval_dict.pkl")
    results, key = saved["results"], saved["args"]["run_key"]
    assert results["protocol"] == "paper" and key["protocol"] == "paper"
    assert key["classes"] == list(range(10)) and len(key["example_images"]) == 10
    pool = np.arange(10)
    np.testing.assert_array_equal(results["source_indices"], pool)  # ids: positions in the pool
    np.testing.assert_array_equal(results["labels"], pool)  # one example image per class
    for r in range(3):
        targets = results["target_indices"][:, r]
        assert sorted(targets) == list(pool) and (targets != pool).all()
    assert sorted(p.name for p in tmp_path.glob("shapes_target_*.png")) == sorted(
        f"shapes_target_{c}.png" for c in range(10))
    capsys.readouterr()
    assert print_tables.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "at the paper's 64 grid points" in printed and "Table 2b" in printed
    row = [line for line in printed.splitlines() if line.startswith("SmallCNN")][1]  # Table 2
    confs = load_results(tmp_path / f"{stem}_all_confs.pkl")["results"]["hull_confs"]
    keep = lst.hull.paper_grid_points()
    mean = confs.reshape(-1, 66)[:, keep].mean(axis=1).reshape(10, -1).mean(axis=1)
    assert f"{mean.mean():.3f} ± {mean.std():.3f}" in row
    assert print_tables.main([str(tmp_path), "--triangle_points", "66"]) == 0
    every = capsys.readouterr().out
    assert "at its 66 grid points" in every
    stored = results["hull_stats"]["mean"]
    assert f"{stored.mean():.3f} ± {stored.std():.3f}" in every
    # the default protocol leaves the run key as it was
    ours = cli.parse_args(argv[:3] + argv[5:])
    assert "protocol" not in cli.run_identity(ours, cli.check_args(ours))


def test_protocol_pairs_walks_every_ordered_pair_of_the_pool_once(tmp_path):
    """--protocol pairs: the example images of --target_classes, every ordered pair of them
    exactly once (rounds = pool size - 1), as a run of its own."""
    argv = ["smallcnn-normal", "shapes", "--full_eval", "--protocol", "pairs", "--target_classes",
            "0", "1", "2", "3", "--rounds", "3", "--get_final_imgs", "--out_dir", str(tmp_path),
            *FAST]
    assert cli.main(argv) == 0
    saved = load_results(tmp_path / f"{stem_for(argv)}_fulleval_dict.pkl")
    results, key = saved["results"], saved["args"]["run_key"]
    assert results["protocol"] == "pairs" and key["protocol"] == "pairs"
    pairs = [(s, t) for s, row in zip(results["source_indices"], results["target_indices"])
             for t in row]
    assert sorted(pairs) == [(s, t) for s in range(4) for t in range(4) if s != t]
    assert stem_for(argv) != stem_for([*argv[:4], "paper", *argv[5:]])


def test_min_confidence_is_the_example_images_threshold_and_part_of_the_key(tmp_path, monkeypatch):
    """--min_confidence is the threshold select_targets gets; a run key names it only when
    it is not the paper's 0.6 (so earlier runs keep their ids)."""
    import lst.experiments

    asked = []
    real = lst.experiments.select_targets
    monkeypatch.setattr(lst.experiments, "select_targets",
                        lambda *a, **k: asked.append(k["min_confidence"]) or real(*a, **k))
    argv = ["smallcnn-normal", "shapes", "--examples", "--out_dir", str(tmp_path), *FAST]
    for threshold in ("0.2", "0.95"):
        assert cli.main([*argv, "--out_dir", str(tmp_path / threshold), "--min_confidence",
                         threshold]) == 0
    assert asked == [0.2, 0.95]  # what the threshold selects: test_data, select_targets
    default = cli.parse_args(argv)
    assert "min_confidence" not in cli.run_identity(default, cli.check_args(default))
    other = cli.parse_args([*argv, "--min_confidence", "0.2"])
    assert cli.run_identity(other, cli.check_args(other))["min_confidence"] == 0.2


def test_cli_defaults_are_the_settings_defaults():
    """The flags come from LSTSettings: same names, same defaults, and back field by field."""
    args = cli.parse_args(["smallcnn-normal", "shapes", "--examples"])
    defaults = LSTSettings()
    for f in fields(LSTSettings):
        if "switch" in f.metadata:  # the adversarial term: off unless --adv_pert
            assert getattr(args, f.metadata["switch"]) is False and getattr(defaults, f.name) is None
        else:
            value = getattr(args, f.name)
            assert (tuple(value) if isinstance(value, list) else value) == getattr(defaults, f.name), f.name
    assert cli.lst_settings(args) == defaults


def test_a_preset_is_defaults_the_run_key_holds_the_values():
    """--preset paper is the paper's flags spelled out (the same run key, so the same results
    file); a flag given explicitly wins over the preset."""
    shapes = ["smallcnn-normal", "shapes", "--examples"]
    spelled = [*shapes, "--step_size", "1e-2", "--iters", "400", "--pthresh", "0.2", "--adv_pert",
               "--adv_step_size", "2e-3"]

    def key(argv):
        args = cli.parse_args(argv)
        return cli.run_identity(args, cli.check_args(args))

    assert key([*shapes, "--preset", "paper"]) == key(spelled) != key(shapes)
    fast = cli.parse_args([*shapes, "--preset", "fast", "--pthresh", "0.3", "--no-retry"])
    assert (fast.schedule, fast.precision, fast.pthresh, fast.retry, fast.iters) == (
        "adaptive", "auto", 0.3, False, 400)


def test_every_settings_field_reaches_the_settings_from_its_flag():
    changed = LSTSettings(step_size=0.5, iters=7, pthresh=0.3, adv_step_size=0.01, init_noise=0.1,
                          log_step=2, get_confs_over_path=True, get_images=True, get_widths=True,
                          width_distances=(0.5, 3.0), width_directions=9, seed=4,
                          precision="bf16", acceptance_margin=0.02, quantize=True,
                          schedule="adaptive", step_start=0.3, step_grow=2.0,
                          step_shrink=0.25, step_max=0.8, step_min=0.005, stop_distance=0.05,
                          stall_steps=7, stall_tolerance=0.1, corrector=True, retry=False,
                          diversity=0.2,
                          matched_fractions=(0.5, 0.9), layers=("features.3",))
    assert all(getattr(changed, f.name) != getattr(LSTSettings(), f.name) for f in fields(LSTSettings))
    argv = ["smallcnn-normal", "shapes", "--examples", "--step_size", "0.5", "--iters", "7",
            "--pthresh", "0.3", "--adv_pert", "--adv_step_size", "0.01", "--init_noise", "0.1",
            "--log_step", "2", "--get_confs_over_path", "--get_images", "--get_widths",
            "--width_distances", "0.5", "3", "--width_directions", "9", "--seed", "4",
            "--precision", "bf16", "--acceptance_margin", "0.02", "--quantize",
            "--schedule", "adaptive",
            "--step_start", "0.3", "--step_grow", "2",
            "--step_shrink", "0.25", "--step_max", "0.8", "--step_min", "0.005",
            "--stop_distance", "0.05", "--stall_steps", "7", "--stall_tolerance", "0.1",
            "--corrector", "--no-retry", "--diversity", "0.2", "--matched_fractions", "0.9", "0.5",
            "--get_layers", "--layers", "features.3"]
    assert cli.lst_settings(cli.parse_args(argv)) == changed


def test_the_adaptive_schedule_is_another_run_with_its_passes_in_the_results(tmp_path, capsys):
    argv = ["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "6", "--rounds", "2",
            "--iters", "40", "--step_size", "0.01", "--pthresh", "0.2", "--out_dir", str(tmp_path),
            "--quiet"]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--schedule", "adaptive"]) == 0
    out = capsys.readouterr().out
    assert "adaptive schedule:" in out and "passes a pair (at most 41)" in out
    fixed, adaptive = (load_results(tmp_path / f"{stem_for(a)}_fulleval_dict.pkl")["results"]
                       for a in (argv, argv + ["--schedule", "adaptive"]))
    assert stem_for(argv) != stem_for(argv + ["--schedule", "adaptive"])
    assert (fixed["passes"] == 41).all() and fixed["passes"].shape == (6, 2)
    assert (adaptive["passes"] <= 41).all() and adaptive["passes"].shape == (6, 2)
    assert np.all(adaptive["init_confs"] - adaptive["final_confs"] < 0.2)
    assert np.isfinite(adaptive["distance_left"]).all()
    assert np.median(adaptive["distance_left"]) < np.median(fixed["distance_left"])
    assert print_tables.main([str(tmp_path)]) == 0  # rows named by what differs: the schedule
    table = capsys.readouterr().out
    assert "SmallCNN schedule=adaptive" in table and "SmallCNN schedule=fixed" in table
    assert "step_grow" not in table


def test_row_labels_name_only_what_differs():
    runs = [{"model": "resnet20-normal", "weights": "a", "pthresh": 0.2, "seed": 0},
            {"model": "resnet20-linf", "weights": "b", "pthresh": 0.2, "seed": 0}]
    assert lst.tables.row_labels(runs, ["N", "AT"]) == ["N", "AT"]  # weights follow the model
    runs += [{"model": "resnet20-normal", "weights": "c", "pthresh": 0.5, "seed": 0}]
    assert lst.tables.row_labels(runs, ["N", "AT", "N2"]) == [
        "N pthresh=0.2 weights=a", "AT pthresh=0.2 weights=b", "N2 pthresh=0.5 weights=c"]
    # two models judging each other: the judges follow the model, unless one model's runs differ
    pair = [{"model": "a-normal", "transfer_models": ["a-linf"], "transfer_weights": ["x"]},
            {"model": "a-linf", "transfer_models": ["a-normal"], "transfer_weights": ["y"]}]
    assert lst.tables.row_labels(pair, ["N", "AT"]) == ["N", "AT"]
    pair.append({"model": "a-normal"})
    assert lst.tables.row_labels(pair, ["N", "AT", "N"])[2] == "N transfer_models=None transfer_weights=None"
    # what was measured besides the walks, and on how many sources, likewise
    measured = [{"model": "a-normal", "num_samples": 30, "matched_fractions": None},
                {"model": "a-linf", "num_samples": 50, "matched_fractions": [0.5]}]
    assert lst.tables.row_labels(measured, ["N", "AT"]) == ["N", "AT"]
    measured.append({"model": "a-normal", "num_samples": 50, "matched_fractions": None})
    assert lst.tables.row_labels(measured, ["N", "AT", "N"])[2] == "N num_samples=50"


SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 images not present")
@pytest.mark.skipif(not (ROOT / "models" / "weights" / "vit-normal.pt").is_file(),
                    reason="vit-normal is not trained and shipped yet (models/MODEL_CARD.md)")
def test_the_shipped_vit_runs_the_readme_command(tmp_path):
    """`python level_set_traversal.py vit-normal cifar10 --cifar_path ../shared/data/cifar10
    --examples`, as a fresh clone runs it: every blind spot is still the source class for the
    ViT and is nearer its target than the source was."""
    argv = [sys.executable, "level_set_traversal.py", "vit-normal", "cifar10", "--cifar_path",
            str(SHARED_CIFAR), "--examples", "--out_dir", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    [results_file] = tmp_path.glob("vit-normal_cifar10_0-1-2-3-4_*_examples_dict.pkl")
    r = load_results(results_file)["results"]
    off = ~np.eye(5, dtype=bool)
    assert r["classes"] == [0, 1, 2, 3, 4] and r["kept"][off].all()
    model, _ = load_model("vit-normal", "cifar10")
    with torch.no_grad():
        predicted = model(torch.as_tensor(r["blind_spots"][off])).argmax(1).numpy()
    sources = np.broadcast_to(np.asarray(r["labels"])[:, None], (5, 5))[off]
    assert (predicted == sources).all()
    images = np.asarray(r["images"])
    source_to_target = np.linalg.norm((images[:, None] - images[None]).reshape(5, 5, -1), axis=-1)
    spot_to_target = np.linalg.norm((r["blind_spots"] - images[None]).reshape(5, 5, -1), axis=-1)
    ratio = spot_to_target[off] / source_to_target[off]
    assert (ratio < 1).all(), np.sort(ratio)  # the defaults' 100 steps: 1% to 95% of the way left
    assert {f"cifar10_target_{c}.png" for c in range(5)} <= {p.name for p in tmp_path.iterdir()}


def test_print_tables_csv_and_json_give_the_numbers_of_the_plain_table(examples_dir, capsys):
    import csv
    import io
    import json

    assert print_tables.main([str(examples_dir)]) == 0
    plain = capsys.readouterr().out
    assert print_tables.main([str(examples_dir), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and all(r["table"] == "examples" and r["dataset"] == "shapes" for r in rows)
    for row in rows:
        for column in ("p0", "final conf.", "L2 (norm.)", "Linf", "SSIM"):
            shown = f"{float(row[column]):.3f} ± {float(row[column + ' std']):.3f}"
            assert shown in plain, (column, shown)
    assert print_tables.main([str(examples_dir), "--format", "json", "--ci"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["SSIM"] for r in records] == pytest.approx([float(r["SSIM"]) for r in rows])
    assert all(r["SSIM low"] <= r["SSIM"] <= r["SSIM high"] for r in records)
    assert all(r["LPIPS"] is None for r in records)  # NaN without AlexNet weights: null


def test_print_tables_alone_reads_the_default_output_folder(tmp_path, monkeypatch, capsys):
    """The paper's usage: the offline default run, then `python print_tables.py`."""
    monkeypatch.chdir(tmp_path)
    assert print_tables.main([]) == 2  # nothing there yet: one line
    assert "plots_and_figures does not exist" in capsys.readouterr().err
    assert cli.main(["smallcnn-normal", "shapes", "--examples", "--quiet"]) == 0
    capsys.readouterr()
    assert print_tables.main([]) == 0
    out = capsys.readouterr().out
    assert "Table 1 over the example pairs" in out and "SmallCNN" in out


def test_compile_with_layers_names_the_models_own_layers(tmp_path, monkeypatch):
    """--compile wraps the model (torch.compile's `_orig_mod.` names); --layers still names the
    model's own modules, and the layer scores are the uncompiled model's. The eager backend
    makes the same wrapper without minutes of code generation."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **_: compile_(model, backend="eager"))
    argv = [*EXAMPLE_ARGS, "--layers", "features.3", "features.16", "--quiet"]
    runs = {}
    for name, extra in (("compiled", ["--compile"]), ("plain", [])):
        proc = run_cli(*argv, *extra, "--out_dir", tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (path,) = (tmp_path / name).glob("*_examples_dict.pkl")
        runs[name] = load_results(path)["results"]
    assert runs["compiled"]["layer_names"] == ["features.3", "features.16"]
    np.testing.assert_allclose(runs["compiled"]["layer_scores"], runs["plain"]["layer_scores"],
                               atol=1e-5)


def test_num_workers_read_the_same_pairs(tmp_path):
    argv = ["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "6", "--rounds", "2",
            "--quiet", *FAST]
    runs = []
    for workers in ("0", "2"):
        out = tmp_path / workers
        assert run_cli(*argv, "--num_workers", workers, "--out_dir", out).returncode == 0
        (path,) = out.glob("*_fulleval_dict.pkl")
        runs.append(load_results(path)["results"])
    for key in ("target_indices", "final_confs", "l2", "ssim"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)


def test_restart_is_the_old_spelling_of_fresh(capsys):
    args = cli.parse_args(["smallcnn-normal", "shapes", "--full_eval", "--restart"])
    cli.check_args(args)
    assert args.fresh and "--restart is deprecated" in capsys.readouterr().err
    assert cli.parse_args(["smallcnn-normal", "shapes", "--full_eval", "--restarts", "2"]).restarts == 2


def test_zero_iterations_is_the_noisy_source(tmp_path):
    """--iters 0, which the settings allow: the blind spots are the sources plus their noise,
    and a run that records the path draws the figures it can (no path figures) without error."""
    argv = [*EXAMPLE_ARGS[:7], "--iters", "0", "--get_confs_over_path", "--get_images",
            "--quiet", "--out_dir", tmp_path]
    proc = run_cli(*argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("*_examples_dict.pkl")
    r = load_results(path)["results"]
    off = ~np.eye(3, dtype=bool)
    assert (r["passes"][off] == 1).all() and len(r["log_iters"]) == 0
    sources = np.broadcast_to(r["images"][:, None], r["blind_spots"].shape)
    gap = np.abs(r["blind_spots"] - sources)[off].max()
    assert 0 < gap <= 2 / 255 + 1e-6  # the noise of width 4/255, nothing else
    assert not list(tmp_path.glob("*_path.png"))


@pytest.mark.parametrize("fast", [True, False])
def test_precision_auto_records_its_choice_in_the_run_key(monkeypatch, fast):
    """--precision auto is the run of the precision it picks: same key, same results file."""
    import lst.precision

    monkeypatch.setattr(lst.precision, "cpu_has_fast", lambda name: fast)
    argv = ["smallcnn-normal", "shapes", "--examples", "--precision"]
    chosen = "bf16" if fast else "fp32"
    assert stem_for(argv + ["auto"]) == stem_for(argv + [chosen])
    args = cli.parse_args(argv + ["auto"])
    assert cli.check_args(args).precision == chosen and args.precision_reason.startswith("auto")
