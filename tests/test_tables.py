"""print_tables on any results (examples, full_eval, companions), the HTML report, and what a
run writes to a log file."""
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import level_set_traversal as cli
import print_tables
from lst.results import save_results
from lst.tables import load_run, table_records, table_rows
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--iters", "4", "--log_step", "2", "--batch_size", "8"]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """An examples run and two full_eval runs (one with companions) in one folder."""
    out = tmp_path_factory.mktemp("mixed")
    assert cli.main(["smallcnn-normal", "shapes", "--examples", "--target_classes", "0", "1", "2",
                     "--out_dir", str(out), *FAST]) == 0
    for extra in (["--get_final_imgs", "--transfer_models", "smallcnn-normal"],
                  ["--pthresh", "0.3"]):
        assert cli.main(["smallcnn-linf", "shapes", "--full_eval", "--num_samples", "6",
                         "--rounds", "2", "--out_dir", str(out), *FAST, *extra]) == 0
    return out


def test_tables_of_a_mixed_folder(mixed_folder, capsys):
    assert print_tables.main([str(mixed_folder)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1 over the example pairs" in printed and "Table 2" in printed
    runs = [load_run(p) for p in sorted(mixed_folder.glob("*.pkl"))]
    assert sorted(r.kind for r in runs) == ["all_confs", "examples", "full_eval", "full_eval"]
    rows = table_rows(runs)
    # n: sources, then pairs (kept pairs in Table 1, triangles in Table 2)
    assert [r[2:4] for r in rows["1"]] == [[6, 12], [6, 12]]
    assert [r[2:4] for r in rows["2"]] == [[6, 6]] and [r[2:4] for r in rows["2b"]] == [[6, 6]]
    assert rows["examples"][0][2:4] == [3, 6]  # 3 classes: 6 ordered pairs, all kept
    assert rows["1"][0][0] != rows["1"][1][0]  # the two full_eval runs are told apart
    examples = next(r for r in runs if r.kind == "examples").results
    off = ~np.eye(3, dtype=bool)
    mean = float(rows["examples"][0][5].split("±")[0])  # final conf. over the six pairs
    assert mean == pytest.approx(examples["final_confs"][off].mean(), abs=5e-4)
    # the natural glob reads the companions too, and skips them quietly
    assert print_tables.main([str(mixed_folder / "*.pkl")]) == 0
    assert capsys.readouterr().out == printed


def test_table3_counts_what_each_judge_says(mixed_folder):
    run = next(load_run(p) for p in mixed_folder.glob("*_fulleval_dict.pkl")
               if "transfer_models" in load_run(p).results)
    res = run.results
    rows = table_rows([run])["3"]
    assert [r[2] for r in rows] == ["SmallCNN (AT) (itself)"] * 3 + ["SmallCNN"] * 3
    assert [r[3] for r in rows] == ["blind spots", "raw targets", "straight line at f"] * 2
    kept = res["kept"]
    prefixes = ("transfer_", "transfer_baseline_", "transfer_line_")
    for row, (j, prefix) in zip(rows, [(j, prefix) for j in (0, 1) for prefix in prefixes]):
        pred = res[f"{prefix}pred"][..., j][kept]
        source = np.broadcast_to(res["labels"][:, None], kept.shape)[kept]
        target = res["target_labels"][kept]
        expected = [(pred == source).mean(), (pred == target).mean(),
                    ((pred != source) & (pred != target)).mean(),
                    res[f"{prefix}source_conf"][..., j][kept].mean()]
        assert row[4:6] == [6, int(kept.sum())]
        assert [float(c.split("±")[0]) for c in row[6:]] == pytest.approx(expected, abs=5e-4)


def test_ci_and_the_delta_curve(mixed_folder, tmp_path, capsys):
    figure = tmp_path / "delta.png"
    assert print_tables.main([str(mixed_folder), "--ci", "--plot", str(figure)]) == 0
    printed = capsys.readouterr().out
    assert "Table 2b" in printed and "Table 3" in printed and "±" not in printed
    assert "95% CI, sources resampled" in printed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    without = [str(p) for p in mixed_folder.glob("*_dict.pkl")]  # no _all_confs.pkl
    assert print_tables.main(without + ["--plot", str(tmp_path / "none.png")]) == 2
    assert "_all_confs.pkl" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()


def test_a_file_that_is_not_a_results_file_is_one_line(mixed_folder, tmp_path, capsys):
    folder = tmp_path / "with_a_stranger"
    shutil.copytree(mixed_folder, folder)
    save_results(folder / "notes.pkl", {}, {"something": np.zeros(3)})
    assert print_tables.main([str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.pkl is not a results file of this tool" in err[0]
    assert print_tables.main([str(tmp_path / "empty_folder_that_is_not_there")]) == 2


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids, self.open = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag not in ("img", "meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open[-5:])
        self.open.pop()


def test_the_report_shows_every_run_and_links_only_existing_files(mixed_folder, capsys):
    assert print_tables.main([str(mixed_folder), "--html"]) == 0
    report = mixed_folder / "report.html"
    parser = Links()
    parser.feed(report.read_text(encoding="utf-8"))
    assert parser.open == []  # every element closed: the page parses
    assert parser.links and all((mixed_folder / link).is_file() for link in parser.links)
    assert not any(link.startswith(("/", "http")) for link in parser.links)  # relative links
    stems = {load_run(p).stem for p in mixed_folder.glob("*_dict.pkl")}
    assert set(parser.ids) == stems  # every run has its section
    figures = {p.name for p in mixed_folder.glob("*.png")}
    assert figures <= set(parser.links)  # every figure, and the example images, are shown
    assert print_tables.main([str(mixed_folder / "*.pkl"), "--html"]) == 2  # a folder, please


def test_a_run_logged_to_a_file_writes_lines_not_carriage_returns(tmp_path):
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        proc = subprocess.run([sys.executable, str(ROOT / "level_set_traversal.py"), "smallcnn-normal",
                               "shapes", "--full_eval", "--num_samples", "20", "--rounds", "2",
                               "--out_dir", str(tmp_path / "out"), *FAST], stderr=stderr,
                              stdout=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0
    text = log.read_text()
    assert "\r" not in text and "full eval (pairs)" in text
    assert len(text.splitlines()) < 15, text


def test_quiet_keeps_only_warnings_and_the_summary(tmp_path):
    proc = run_cli("smallcnn-normal", "shapes", "--full_eval", "--num_samples", "20", "--rounds",
                   "2", "--quiet", "--out_dir", tmp_path / "out", *FAST)
    assert proc.returncode == 0 and proc.stdout.startswith("full_eval: 40 pairs")
    assert "full eval (pairs)" not in proc.stderr and "resuming" not in proc.stderr
    assert all(line.startswith("LPIPS is NaN") for line in proc.stderr.strip().splitlines())


def test_matched_progress_restart_and_layer_tables(tmp_path, capsys):
    """A full_eval with --matched_fractions, --restarts and --get_layers gives Tables 2c, 4 and
    5, and --plot draws chords kept against f and the layer scores beside the delta curve."""
    out = tmp_path / "runs"
    assert cli.main(["smallcnn-normal", "shapes", "--full_eval", "--num_samples", "4",
                     "--rounds", "3", "--iters", "20", "--get_final_imgs", "--restarts", "2",
                     "--matched_fractions", "0.25", "0.5", "--get_layers", "--out_dir", str(out),
                     "--quiet"]) == 0
    figure = tmp_path / "delta.png"
    assert print_tables.main([str(out), "--plot", str(figure)]) == 0
    printed = capsys.readouterr().out
    assert "Table 2c" in printed and "Table 4" in printed and "Table 5" in printed
    assert "features.16" in printed  # SmallCNN's last default layer
    rows = [line.split() for line in printed.splitlines() if line.startswith("SmallCNN")]
    assert [r[2] for r in rows if len(r) > 2 and r[2] in ("0.25", "0.5", "final")] == [
        "0.25", "0.5", "final"]
    for png in (figure, tmp_path / "delta_matched.png", tmp_path / "delta_layers.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [r for r in table_records([load_run(p) for p in out.glob("*.pkl")])
               if r["table"] in ("2c", "4", "5")]
    assert {r["table"] for r in records} == {"2c", "4", "5"}
    assert all(0 <= r["reached f"] <= 1 for r in records if r["table"] == "2c")
