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
from lst.tables import load_run, table_rows

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--iters", "4", "--log_step", "2", "--batch_size", "8"]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """An examples run and two full_eval runs (one with companions) in one folder."""
    out = tmp_path_factory.mktemp("mixed")
    assert cli.main(["smallcnn-normal", "shapes", "--examples", "--target_classes", "0", "1", "2",
                     "--out_dir", str(out), *FAST]) == 0
    for extra in (["--get_final_imgs"], ["--pthresh", "0.3"]):
        assert cli.main(["smallcnn-linf", "shapes", "--full_eval", "--num_samples", "6",
                         "--rounds", "2", "--out_dir", str(out), *FAST, *extra]) == 0
    return out


def test_tables_of_a_mixed_folder(mixed_folder, capsys):
    assert print_tables.main([str(mixed_folder)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1 over the example pairs" in printed and "Table 2" in printed
    runs = [load_run(p) for p in sorted(mixed_folder.glob("*.pkl"))]
    assert sorted(r.kind for r in runs) == ["all_confs", "examples", "full_eval", "full_eval"]
    rows1, rows2, rows_examples = table_rows(runs)
    assert [r[2] for r in rows1] == [12, 12] and [r[2] for r in rows2] == [6]
    assert rows_examples[0][2] == 6  # 3 classes: 6 ordered pairs, all kept
    assert rows1[0][0] != rows1[1][0]  # the two full_eval runs are told apart
    examples = next(r for r in runs if r.kind == "examples").results
    off = ~np.eye(3, dtype=bool)
    mean = float(rows_examples[0][4].split("±")[0])  # final conf. over the six pairs
    assert mean == pytest.approx(examples["final_confs"][off].mean(), abs=5e-4)
    # the natural glob reads the companions too, and skips them quietly
    assert print_tables.main([str(mixed_folder / "*.pkl")]) == 0
    assert capsys.readouterr().out == printed


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
    proc = subprocess.run([sys.executable, str(ROOT / "level_set_traversal.py"), "smallcnn-normal",
                           "shapes", "--full_eval", "--num_samples", "20", "--rounds", "2",
                           "--quiet", "--out_dir", str(tmp_path / "out"), *FAST],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stdout.startswith("full_eval: 40 pairs")
    assert "full eval (pairs)" not in proc.stderr and "resuming" not in proc.stderr
    assert all(line.startswith("LPIPS is NaN") for line in proc.stderr.strip().splitlines())
