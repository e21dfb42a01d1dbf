"""Print Table 1 (distances to the target) and Table 2 (triangular hulls) from full_eval results.

    python print_tables.py plots_and_figures/                      # every *_fulleval_dict.pkl
    python print_tables.py 'runs/*_fulleval_dict.pkl' --format latex

Mean ± std per results file (one row per model run), over the kept (source, target) pairs for
Table 1 and over sources for Table 2 (files written with --get_final_imgs).
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
from tabulate import tabulate

from lst.hull import HULL_DELTAS
from lst.results import ResultsError, load_results

ARCH_NAMES = {"resnet50": "ResNet-50", "deit_small_patch16_224": "DeiT-S", "wideresnet": "WRN-28-10",
              "resnet20": "ResNet-20", "smallcnn": "SmallCNN"}
TYPE_NAMES = {"normal": "", "linf": " (AT)"}
FORMATS = {"plain": "simple", "github": "github", "latex": "latex_raw"}

TABLE1 = [("p0", "init_confs"), ("final conf.", "final_confs"), ("L2 (norm.)", "l2"),
          ("Linf", "linf"), ("SSIM", "ssim"), ("LPIPS", "lpips")]
TABLE2 = ([("p_src", "p_src"), ("mean conf.", "mean")]
          + [(f"frac > p_src-{d:g}", f"frac_above_{d:g}") for d in HULL_DELTAS]
          + [("edge mean", "edge_mean"), ("edge min (p-p_src)", "edge_min")])


def model_label(args: dict) -> str:
    """'ResNet-50 (AT)' from the run's model name (and its --desc, if any)."""
    arch, _, kind = args["model"].rpartition("-")
    label = ARCH_NAMES.get(arch, arch) + TYPE_NAMES.get(kind, f" ({kind})")
    return f"{args['desc']}{label}" if args.get("desc") else label


def mean_std(values: np.ndarray, pm: str) -> str:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    return f"{values.mean():.3f} {pm} {values.std():.3f}"


def expand(patterns: list[str]) -> list[Path]:
    """Paths, globs and directories (their *_fulleval_dict.pkl) to a sorted list of files."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files += sorted(path.glob("*_fulleval_dict.pkl"))
        elif any(ch in pattern for ch in "*?["):
            files += sorted(Path(p) for p in glob.glob(pattern))
        else:
            files.append(path)
    return files


def tables(files: list[Path], fmt: str) -> str:
    pm = r"$\pm$" if fmt == "latex" else "±"
    rows1, rows2 = [], []
    for path in files:
        payload = load_results(path)
        args, res = payload["args"], payload["results"]
        if "final_confs" not in res or "l2" not in res or res.get("source_indices") is None:
            raise ResultsError(f"{path} is not a full_eval results file")
        kept = np.asarray(res["kept"], dtype=bool)
        label = [model_label(args), args["dataset"]]
        rows1.append(label + [mean_std(np.asarray(res[key])[kept], pm) for _, key in TABLE1])
        if "hull_stats" in res:
            rows2.append(label + [mean_std(res["hull_stats"][key], pm) for _, key in TABLE2])
    tablefmt = FORMATS[fmt]

    def header(names: list[str]) -> list[str]:
        if fmt != "latex":
            return names
        return [n.replace("_", r"\_").replace(">", "$>$") for n in names]

    out = ["Table 1: blind spots vs. their targets (mean ± std over kept pairs)",
           tabulate(rows1, headers=header(["model", "dataset"] + [h for h, _ in TABLE1]), tablefmt=tablefmt)]
    if rows2:
        out += ["", "Table 2: source-class confidence over triangles (source, two blind spots); "
                "mean ± std over sources",
                tabulate(rows2, headers=header(["model", "dataset"] + [h for h, _ in TABLE2]),
                         tablefmt=tablefmt)]
    else:
        out += ["", "Table 2: no hull statistics in these files (run full_eval with --get_final_imgs)"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="results files, globs or directories")
    p.add_argument("--format", choices=sorted(FORMATS), default="plain")
    args = p.parse_args(argv)
    files = expand(args.files)
    if not files:
        print(f"error: no full_eval results files in {' '.join(args.files)}", file=sys.stderr)
        return 2
    try:
        print(tables(files, args.format))
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
