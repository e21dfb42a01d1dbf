"""Print Tables 1-5 from results files; draw the delta curve; write an HTML report.

    python print_tables.py                                     # the default output folder
    python print_tables.py plots_and_figures/                  # every results file in the folder
    python print_tables.py plots_and_figures/ --format csv > tables.csv   # or json: numbers
    python print_tables.py 'runs/*.pkl' --format latex --ci    # 95% intervals over sources
    python print_tables.py plots_and_figures/ --plot delta.png # the delta curve of full_evals
                                                 # (and delta_matched.png: chords kept against f)
    python print_tables.py plots_and_figures/ --html           # also plots_and_figures/report.html
                                                 # and an explorer page per run with its path

Which files give which table: `lst.tables.TABLES` (also at the end of --help). Cells are mean ±
std, or with --ci the mean and its 95% bootstrap interval over sources (2,000 resamples of
sources, seeded). The companion _all_confs.pkl files give the delta curve of --plot OUT.png;
full_evals with Table 2c give OUT_matched.png, chords kept within 0.05 against f; runs with
layer scores OUT_layers.png, the score against depth. Every table has n (sources, pairs), and
rows are labelled by the model and by every argument that differs between the runs shown (e.g.
"pthresh=0.5"). --format csv or json prints one record per run and table with every column as
numbers (mean, std and, with --ci, low and high), for pandas and spreadsheets. A file that is
not a results file of this tool stops with one line (exit 2).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import sys
from pathlib import Path

from lst.explorer import write_explorers
from lst.hull import DELTA_CURVE
from lst.plots import plot_delta_curves, plot_layer_curves, plot_matched_curves
from lst.report import write_report
from lst.results import ResultsError
from lst.tables import (FORMATS, TRIANGLE_POINTS, delta_curves, format_tables, layer_curves,
                        load_run, matched_curves, table_records, tables_help,
                        with_triangle_points)

DEFAULT_FOLDER = "plots_and_figures"  # level_set_traversal.py's default --out_dir
RECORD_FORMATS = ("csv", "json")


def expand(patterns: list[str]) -> list[Path]:
    """Paths, globs and directories (every *.pkl in them) to a list of files, each once."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files += sorted(path.glob("*.pkl"))
        elif any(ch in pattern for ch in "*?["):
            files += sorted(Path(p) for p in glob.glob(pattern))
        else:
            files.append(path)
    return list(dict.fromkeys(files))


def print_records(records: list[dict], fmt: str) -> None:
    """The records on stdout: CSV with the union of their columns (empty where a table has no
    such column), or a JSON list (NaN as null)."""
    if fmt == "json":
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                 for r in records]
        print(json.dumps(clean, indent=1))
        return
    columns = list(dict.fromkeys(k for r in records for k in r))
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=f"Tables: {tables_help()}")
    p.add_argument("files", nargs="*", default=[DEFAULT_FOLDER],
                   help=f"results files, globs or directories (default: {DEFAULT_FOLDER}/)")
    p.add_argument("--format", default="plain",
                   choices=sorted(k for k in FORMATS if k != "html") + list(RECORD_FORMATS),
                   help="tables as text (plain, github, latex), or records as numbers (csv, json)")
    p.add_argument("--ci", action="store_true",
                   help="95%% bootstrap intervals over sources instead of ± std")
    p.add_argument("--plot", metavar="OUT.png", default=None,
                   help="also draw the delta curve of the full_eval runs (their _all_confs.pkl) "
                        "and, for runs with Table 2c, OUT_matched.png: chords kept against f")
    p.add_argument("--triangle_points", type=int, choices=TRIANGLE_POINTS, default=None,
                   help="Table 2 over 64 points (the paper's code's float grid drops two of the "
                        "66) or all 66 (default: 64 for runs of --protocol paper, 66 otherwise); "
                        "recomputed from each run's _all_confs.pkl")
    p.add_argument("--html", action="store_true",
                   help="also write FOLDER/report.html (one folder argument): every run with its "
                        "arguments, tables and figures, and FOLDER/explore_*.html: walk the "
                        "recorded paths of examples runs with --get_images and full_evals with "
                        "--get_final_imgs (runs of several models on the same pairs side by side)")
    args = p.parse_args(argv)
    if args.html and (len(args.files) != 1 or not Path(args.files[0]).is_dir()):
        print("error: --html takes one folder: print_tables.py OUT_DIR --html", file=sys.stderr)
        return 2
    missing = [f for f in args.files if not any(ch in f for ch in "*?[") and not Path(f).exists()]
    if missing:
        print(f"error: {missing[0]} does not exist (results files, globs or folders; default "
              f"{DEFAULT_FOLDER}/)", file=sys.stderr)
        return 2
    files = expand(args.files)
    try:
        runs = with_triangle_points([load_run(f) for f in files], args.triangle_points)
        if not any(r.kind in ("full_eval", "examples") for r in runs):
            raise ResultsError(f"no results files in {' '.join(args.files)}")
        if args.format in RECORD_FORMATS:
            print_records(table_records(runs, ci=args.ci), args.format)
        else:
            print(format_tables(runs, args.format, ci=args.ci))
        if args.plot:
            plot = Path(args.plot)
            curves, matched, layered = delta_curves(runs), matched_curves(runs), layer_curves(runs)
            if not curves and not matched and not layered:
                raise ResultsError("--plot draws the delta curve from _all_confs.pkl files "
                                   "(full_eval --get_final_imgs), chords kept against f from "
                                   "full_evals with --matched_fractions and layer scores from "
                                   "runs with --get_layers; none among these files")
            if curves:
                print(f"wrote {plot_delta_curves(curves, DELTA_CURVE, plot)}")
            if matched:
                matched_path = plot.with_name(f"{plot.stem}_matched{plot.suffix}")
                print(f"wrote {plot_matched_curves(matched, matched_path)}")
            if layered:
                layers_path = plot.with_name(f"{plot.stem}_layers{plot.suffix}")
                print(f"wrote {plot_layer_curves(layered, layers_path)}")
        if args.html:
            pages, note = write_explorers(args.files[0], runs)
            for page in pages:
                print(f"wrote {page}")
            if note:
                print(note)
            print(f"wrote {write_report(args.files[0], runs, pages, note)}")
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
