"""Print Tables 1 and 2 from results files, and write an HTML report of a folder of runs.

    python print_tables.py plots_and_figures/                  # every results file in the folder
    python print_tables.py 'runs/*.pkl' --format latex
    python print_tables.py plots_and_figures/ --html           # also plots_and_figures/report.html

full_eval files give Table 1 (mean ± std over kept pairs) and Table 2 (over sources, files written
with --get_final_imgs); examples files give Table 1 over their example pairs; companion
_all_confs.pkl files are skipped quietly. Every table has n, and rows are labelled by the model and
by every argument that differs between the runs shown (e.g. "pthresh=0.5"). A file that is not
a results file of this tool stops with one line (exit 2).
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from lst.report import write_report
from lst.results import ResultsError
from lst.tables import FORMATS, format_tables, load_run


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="results files, globs or directories")
    p.add_argument("--format", choices=sorted(k for k in FORMATS if k != "html"), default="plain")
    p.add_argument("--html", action="store_true",
                   help="also write FOLDER/report.html (one folder argument): every run with its "
                        "arguments, tables and figures")
    args = p.parse_args(argv)
    if args.html and (len(args.files) != 1 or not Path(args.files[0]).is_dir()):
        print("error: --html takes one folder: print_tables.py OUT_DIR --html", file=sys.stderr)
        return 2
    files = expand(args.files)
    try:
        runs = [load_run(f) for f in files]
        if not any(r.kind in ("full_eval", "examples") for r in runs):
            raise ResultsError(f"no results files in {' '.join(args.files)}")
        print(format_tables(runs, args.format))
        if args.html:
            print(f"wrote {write_report(args.files[0], runs)}")
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
