"""Tables 1 and 2 from results files, and the labels that tell runs apart.

A `Run` is one results file of this tool: a full_eval (`..._fulleval_dict.pkl`, Tables 1 and 2),
an examples run (`..._examples_dict.pkl`, Table 1 over its example pairs), or a full_eval's
companion (`..._all_confs.pkl`, triangle confidences; no row of its own). Every table shows mean
± std and n: kept pairs in Table 1, sources in Table 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

from .hull import HULL_DELTAS
from .results import ResultsError, load_results

ARCH_NAMES = {"resnet50": "ResNet-50", "deit_small_patch16_224": "DeiT-S", "wideresnet": "WRN-28-10",
              "resnet20": "ResNet-20", "smallcnn": "SmallCNN"}
TYPE_NAMES = {"normal": "", "linf": " (AT)"}
FORMATS = {"plain": "simple", "github": "github", "latex": "latex_raw", "html": "html"}

TABLE1 = [("p0", "init_confs"), ("final conf.", "final_confs"), ("L2 (norm.)", "l2"),
          ("Linf", "linf"), ("SSIM", "ssim"), ("LPIPS", "lpips")]
TABLE2 = ([("p_src", "p_src"), ("mean conf.", "mean")]
          + [(f"frac > p_src-{d:g}", f"frac_above_{d:g}") for d in HULL_DELTAS]
          + [("edge mean", "edge_mean"), ("edge min (p-p_src)", "edge_min")])
SUFFIXES = {"full_eval": "_fulleval_dict.pkl", "examples": "_examples_dict.pkl",
            "all_confs": "_all_confs.pkl"}


@dataclass
class Run:
    """One results file: its path, kind (full_eval, examples, all_confs), args and results."""

    path: Path
    kind: str
    args: dict
    results: dict

    @property
    def stem(self) -> str:
        """The file name without its kind's suffix: the prefix of the run's figures."""
        return self.path.name.removesuffix(SUFFIXES[self.kind])


def load_run(path: str | Path) -> Run:
    """Read one results file and tell its kind; ResultsError if it is not one of this tool's."""
    path = Path(path)
    payload = load_results(path)
    res = payload["results"]
    if "source_indices" in res and "final_confs" in res:
        kind = "full_eval"
    elif "blind_spots" in res and "classes" in res:
        kind = "examples"
    elif "hull_confs" in res and "final_confs" not in res:
        kind = "all_confs"
    else:
        raise ResultsError(f"{path} is not a results file of this tool")
    return Run(path, kind, payload["args"], res)


def model_label(args: dict) -> str:
    """'ResNet-50 (AT)' from the run's model name (and its --desc, if any)."""
    arch, _, kind = args["model"].rpartition("-")
    label = ARCH_NAMES.get(arch, arch) + TYPE_NAMES.get(kind, f" ({kind})")
    return f"{args['desc']}{label}" if args.get("desc") else label


def mean_std(values: np.ndarray, pm: str = "±") -> str:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    return f"{values.mean():.3f} {pm} {values.std():.3f}"


def run_arguments(args: dict) -> dict:
    """The results-relevant arguments of a run, flat ('pthresh', 'seed', 'num_samples', ...):
    from its run key, or from its flags for files written before run keys."""
    key = args.get("run_key")
    if key is None:
        return {k: v for k, v in args.items() if k not in ("desc", "out_dir", "device")}
    flat = {k: v for k, v in key.items() if k != "settings"}
    flat.update(key.get("settings", {}))
    return flat


def show_value(value) -> str:
    """A value as a short string: floats with %g, lists joined by commas."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(show_value(v) for v in value)
    return str(value)


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
    return [" ".join([b] + [f"{k}={show_value(a.get(k))}" for k in differing])
            for a, b in zip(arguments, base)]


def labels(runs: list[Run]) -> list[str]:
    """One distinct label per run: `row_labels` among the runs of the same kind (they share a
    table), in the order given."""
    out = [""] * len(runs)
    for kind in {r.kind for r in runs}:
        where = [i for i, r in enumerate(runs) if r.kind == kind]
        group = [runs[i] for i in where]
        for i, label in zip(where, row_labels([run_arguments(r.args) for r in group],
                                              [model_label(r.args) for r in group])):
            out[i] = label
    return out


def _examples_pairs(res: dict) -> dict[str, np.ndarray]:
    """Table 1 columns over an examples run's kept off-diagonal pairs, (n,) each."""
    final = np.asarray(res["final_confs"])
    k = len(final)
    use = ~np.eye(k, dtype=bool) & np.asarray(res["kept"], dtype=bool)
    columns = {"init_confs": np.broadcast_to(np.asarray(res["init_confs"])[:, None], (k, k))}
    columns.update({key: np.asarray(res[key]) for _, key in TABLE1 if key != "init_confs"})
    return {key: value[use] for key, value in columns.items()}


def table_rows(runs: list[Run], pm: str = "±") -> tuple[list, list, list]:
    """Rows of Table 1 (full_eval), Table 2 (full_eval with hull statistics) and the examples'
    Table 1; each row is [label, dataset, n, mean ± std ...]. all_confs runs give no row."""
    shown = [r for r in runs if r.kind in ("full_eval", "examples")]
    rows1, rows2, rows_examples = [], [], []
    for label, run in zip(labels(shown), shown):
        res, head = run.results, [label, run.args["dataset"]]
        if run.kind == "examples":
            pairs = _examples_pairs(res)
            n = len(pairs["final_confs"])
            rows_examples.append(head + [n] + [mean_std(pairs[key], pm) for _, key in TABLE1])
            continue
        kept = np.asarray(res["kept"], dtype=bool)
        rows1.append(head + [int(kept.sum())]
                     + [mean_std(np.asarray(res[key])[kept], pm) for _, key in TABLE1])
        if "hull_stats" in res:
            stats = res["hull_stats"]
            n_sources = int(np.isfinite(np.asarray(stats["p_src"], dtype=float)).sum())
            rows2.append(head + [n_sources] + [mean_std(stats[key], pm) for _, key in TABLE2])
    return rows1, rows2, rows_examples


def format_tables(runs: list[Run], fmt: str = "plain") -> str:
    """The tables of these runs as text (fmt: plain, github, latex or html), titles included."""
    pm = r"$\pm$" if fmt == "latex" else "±"
    rows1, rows2, rows_examples = table_rows(runs, pm)

    def table(rows: list, columns: list[tuple[str, str]]) -> str:
        headers = ["model", "dataset", "n"] + [h for h, _ in columns]
        if fmt == "latex":
            headers = [h.replace("_", r"\_").replace(">", "$>$") for h in headers]
        return tabulate(rows, headers=headers, tablefmt=FORMATS[fmt])

    out = []
    if rows1:
        out += ["Table 1: blind spots vs. their targets (mean ± std over kept pairs; n kept pairs)",
                table(rows1, TABLE1)]
        if rows2:
            out += ["", "Table 2: source-class confidence over triangles (source, two blind "
                    "spots); mean ± std over sources (n sources)", table(rows2, TABLE2)]
        else:
            out += ["", "Table 2: no hull statistics in these files (run full_eval with "
                    "--get_final_imgs)"]
    if rows_examples:
        out += ([""] if out else []) + [
            "Table 1 over the example pairs (--examples; mean ± std over kept pairs, n pairs)",
            table(rows_examples, TABLE1)]
    return "\n".join(out)
