"""Print Table 1 (distances to the target) and Table 2 (triangular hulls) from full_eval results.

    python print_tables.py plots_and_figures/                      # every *_fulleval_dict.pkl
    python print_tables.py 'runs/*_fulleval_dict.pkl' --format latex

Mean ± std per results file (one row per run), over the kept (source, target) pairs for Table 1
and over sources for Table 2 (files written with --get_final_imgs), with n. Rows are labelled by
the model and by every argument that differs between the runs shown (e.g. "pthresh=0.5").
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


def run_arguments(args: dict) -> dict:
    """The results-relevant arguments of a run, flat ('pthresh', 'seed', 'num_samples', ...):
    from its run key, or from its flags for files written before run keys."""
    key = args.get("run_key")
    if key is None:
        return {k: v for k, v in args.items() if k not in ("desc", "out_dir", "device")}
    flat = {k: v for k, v in key.items() if k != "settings"}
    flat.update(key.get("settings", {}))
    return flat


def row_labels(arguments: list[dict], base: list[str]) -> list[str]:
    """base[i] plus every argument whose value differs between the runs shown, e.g.
    'ResNet-20 (AT) pthresh=0.5', so that no two rows look alike."""
    names = sorted({k for a in arguments for k in a} - {"model", "dataset", "mode"})
    differing = [k for k in names if len({repr(a.get(k)) for a in arguments}) > 1]
    # other models have other weights: name the weights only where one model's runs differ
    implied = {"weights", "weights_file"}
    differing = [k for k in differing if k not in implied or any(
        len({repr(a.get(k)) for a in arguments if a.get("model") == m}) > 1
        for m in {a.get("model") for a in arguments})]

    def show(value) -> str:
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, (list, tuple)):
            return ",".join(show(v) for v in value)
        return str(value)

    return [" ".join([b] + [f"{k}={show(a.get(k))}" for k in differing])
            for a, b in zip(arguments, base)]


def tables(files: list[Path], fmt: str) -> str:
    pm = r"$\pm$" if fmt == "latex" else "±"
    runs = []
    for path in files:
        payload = load_results(path)
        args, res = payload["args"], payload["results"]
        if "final_confs" not in res or "l2" not in res or res.get("source_indices") is None:
            raise ResultsError(f"{path} is not a full_eval results file")
        runs.append((args, res))
    labels = row_labels([run_arguments(a) for a, _ in runs], [model_label(a) for a, _ in runs])
    rows1, rows2 = [], []
    for label, (args, res) in zip(labels, runs):
        kept = np.asarray(res["kept"], dtype=bool)
        rows1.append([label, args["dataset"], int(kept.sum())]
                     + [mean_std(np.asarray(res[key])[kept], pm) for _, key in TABLE1])
        if "hull_stats" in res:
            stats = res["hull_stats"]
            n_sources = int(np.isfinite(np.asarray(stats["p_src"], dtype=float)).sum())
            rows2.append([label, args["dataset"], n_sources]
                         + [mean_std(stats[key], pm) for _, key in TABLE2])
    tablefmt = FORMATS[fmt]

    def header(names: list[str]) -> list[str]:
        if fmt != "latex":
            return names
        return [n.replace("_", r"\_").replace(">", "$>$") for n in names]

    out = ["Table 1: blind spots vs. their targets (mean ± std over kept pairs; n kept pairs)",
           tabulate(rows1, headers=header(["model", "dataset", "n"] + [h for h, _ in TABLE1]),
                    tablefmt=tablefmt)]
    if rows2:
        out += ["", "Table 2: source-class confidence over triangles (source, two blind spots); "
                "mean ± std over sources (n sources)",
                tabulate(rows2, headers=header(["model", "dataset", "n"] + [h for h, _ in TABLE2]),
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
