"""Tables 1, 2, 2b, 2c, 3, 4 and 5 and the delta curve from results files, and the labels that
tell runs apart.

A `Run` is one results file of this tool: a full_eval (`..._fulleval_dict.pkl`, Tables 1, 2, 2b,
2c (geometry at matched progress), 3, 4 (restarts) and 5 (layer scores)), an examples run
(`..._examples_dict.pkl`, Table 1 over its example pairs, Tables 3, 4 and 5), or a
full_eval's companion (`..._all_confs.pkl`, triangle confidences: the delta curve; no row of its
own). Every cell is a mean with ± std or its 95% bootstrap interval over sources, and every
row says its n: sources and pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

from .hull import (DELTA_CURVE, HULL_DELTAS, SEGMENT_DELTAS, delta_curve, paper_grid_points,
                   table2_stats, triangle_grid)
from .restarts import restart_stats
from .results import ResultsError, load_results
from .schema import upgrade
from .settings import LSTSettings
from .uncertainty import estimate

ARCH_NAMES = {"resnet50": "ResNet-50", "deit_small_patch16_224": "DeiT-S", "wideresnet": "WRN-28-10",
              "resnet20": "ResNet-20", "smallcnn": "SmallCNN", "vit": "ViT"}
TYPE_NAMES = {"normal": "", "linf": " (AT)"}
FORMATS = {"plain": "simple", "github": "github", "latex": "latex_raw", "html": "html"}

RUN_HEAD = ("model", "dataset", "sources", "pairs")
TABLE1_COLUMNS = (("p0", "init_confs"), ("final conf.", "final_confs"), ("L2 (norm.)", "l2"),
                  ("Linf", "linf"), ("SSIM", "ssim"), ("LPIPS", "lpips"))
SEGMENT_COLUMNS = tuple((f"{kind} kept d={d:g}", f"{kind}_kept_{d:g}") for d in SEGMENT_DELTAS
                        for kind in ("limbs", "chords"))


@dataclass(frozen=True)
class Table:
    """One table: its key in `table_cells`, its title ({spread}: what a cell is; {grid}: Table
    2's grid note), the head columns that say what a row is, its value columns as (header,
    results key) (key "" where the column is computed, not read), and which results files give
    it (`tables_help`, print_tables.py's help). The one home of each table."""

    key: str
    title: str
    head: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    given_by: str

    @property
    def headers(self) -> list[str]:
        return [*self.head, *(h for h, _ in self.columns)]


TABLES = (
    Table("1", "Table 1: blind spots vs. their targets ({spread} over kept pairs; n = sources, "
          "kept pairs)", RUN_HEAD, TABLE1_COLUMNS, "full_eval files give Table 1 (over kept pairs)"),
    Table("2", "Table 2: source-class confidence over triangles (source, two blind spots){grid}; "
          "{spread} over sources (n = sources, triangles)", RUN_HEAD,
          (("p_src", "p_src"), ("mean conf.", "mean"),
           *((f"frac > p_src-{d:g}", f"frac_above_{d:g}") for d in HULL_DELTAS),
           ("edge mean", "edge_mean"), ("edge min (p-p_src)", "edge_min")),
          "Table 2 (triangles, over sources, with --get_final_imgs; over 64 of the 66 grid "
          "points, as the paper's code, with --triangle_points 64 or for runs of --protocol "
          "paper)"),
    Table("2b", "Table 2b: star-like or convex? Fraction of a source's limbs (source -> blind "
          "spot) and chords (blind spot -> blind spot) whose minimum over 21 points stays above "
          "p_src - delta; {spread} over sources (n = sources, chords)", RUN_HEAD,
          SEGMENT_COLUMNS, "Table 2b (limbs and chords, with --get_final_imgs)"),
    Table("2c", "Table 2c: geometry at matched progress. For each fraction f of the way to the "
          "target, each walk's first iterate a(f) with 1 - |x - x_t|/|x_s - x_t| >= f: fraction "
          "of a source's walks that reached f, and fraction of its limbs (source -> a(f)), chords "
          "(a(f) -> b(f)) and triangles (source, a(f), b(f)) whose minimum stays above p_src - "
          "delta; f = final: the blind spots; {spread} over sources (n = sources with two walks "
          "at f)", ("model", "dataset", "f", "sources"),
          (("reached f", "reached"),
           *((f"{kind} kept d={d:g}", f"{kind}_kept_{d:g}") for d in SEGMENT_DELTAS
             for kind in ("limbs", "chords", "triangles"))),
          "Table 2c (limbs, chords and triangles at matched progress, with --matched_fractions)"),
    Table("examples", "Table 1 over the example pairs (--examples; {spread} over kept pairs; "
          "n = sources, kept pairs)", RUN_HEAD, TABLE1_COLUMNS,
          "examples files give Table 1 over their example pairs"),
    Table("3", "Table 3: blind spots of A judged by B: fraction of kept pairs B classifies as the "
          "source, the target or another class, and B's source-class confidence; {spread}; "
          "baselines: the raw targets, and the straight line x_s + f (x_t - x_s) at each blind "
          "spot's own progress f",
          ("blind spots of A", "run", "judged by B", "images", "sources", "pairs"),
          (("as source", ""), ("as target", ""), ("as other", ""), ("B's p(source)", "")),
          "runs with --transfer_models Table 3 (blind spots of A judged by B)"),
    Table("4", "Table 4: K walks per pair (--restarts). spread: mean pairwise distance of a "
          "pair's K blind spots over its source-target distance; chords between them kept above "
          "p0 - delta; distance left (mean over restarts); std: across the K restarts of a pair; "
          "{spread} over pairs", ("model", "run", "restarts", "sources", "pairs"),
          (("spread (pairwise/span)", "spread"),
           *((f"chords kept d={d:g}", f"chords_kept_{d:g}") for d in SEGMENT_DELTAS),
           ("distance left", "distance_left"), ("std final conf.", "final_confs_std"),
           ("std L2", "l2_std"), ("std SSIM", "ssim_std"), ("std dist. left", "distance_left_std")),
          "runs with --restarts Table 4 (K blind spots per pair)"),
    Table("5", "Table 5: inside the network. Layer score d_t / (d_s + d_t), cosine distances of "
          "the layer's representation to the source's and the target's: 1 = like the source, 0 "
          "= like the target; at the blind spot and along the recorded path; {spread} over kept "
          "pairs", ("model", "run", "layer", "depth", "sources", "pairs"),
          (("at the blind spot", ""), ("path: first third", ""), ("path: middle third", ""),
           ("path: last third", "")),
          "runs with --get_layers Table 5 (layer scores: where a blind spot becomes the source)"),
)
TABLE = {t.key: t for t in TABLES}
TABLE1, TABLE2, TABLE2B, TABLE2C, TABLE4 = (list(TABLE[k].columns)
                                            for k in ("1", "2", "2b", "2c", "4"))
TABLE3_IMAGES = (("blind spots", "transfer_"), ("raw targets", "transfer_baseline_"),
                 ("straight line at f", "transfer_line_"))
NO_TABLE2 = "Table 2: no hull statistics in these files (run full_eval with --get_final_imgs)"


def tables_help() -> str:
    """Which results files give which table, from `TABLES` (print_tables.py's help)."""
    return "; ".join(t.given_by for t in TABLES) + "."


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
    """Read one results file, tell its kind and bring it up to the current schema
    (`lst.schema.upgrade`); ResultsError if it is not one of this tool's."""
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
    payload = upgrade(payload, kind, str(path))
    return Run(path, kind, payload["args"], payload["results"])


TRIANGLE_POINTS = (64, 66)  # Table 2 over the paper's float grid, or over every grid point


def with_triangle_points(runs: list[Run], points: int | None = None) -> list[Run]:
    """The runs with Table 2 over `points` grid points: 66 (every point, what a run computes) or
    64 (the paper's code's float grid, `lst.hull.paper_grid_points`), recomputed from the
    triangle confidences of the run's _all_confs.pkl companion; None: 64 for runs of
    --protocol paper, 66 for the others. A run shown over 64 points has
    results["triangle_points"] = 64; one without its companion file loses Table 2."""
    if points is not None and points not in TRIANGLE_POINTS:
        raise ResultsError(f"--triangle_points is 64 (the paper's) or 66 (all), got {points}")
    shown = []
    for run in runs:
        wanted = points or (64 if run.results.get("protocol") == "paper" else 66)
        if run.kind != "full_eval" or "hull_stats" not in run.results or wanted == 66:
            shown.append(run)
            continue
        results = {k: v for k, v in run.results.items() if k != "hull_stats"}
        companion = run.path.with_name(f"{run.stem}{SUFFIXES['all_confs']}")
        if companion.is_file():
            confs = load_results(companion)["results"]["hull_confs"]
            results["hull_stats"] = table2_stats(confs, paper_grid_points())
            results["triangle_points"] = 64
        shown.append(Run(run.path, run.kind, run.args, results))
    return shown


def model_label(args: dict) -> str:
    """'ResNet-50 (AT)' from the run's model name ARCH-TYPE (and its --desc, if any); any other
    name (a user's model file or factory) as it is."""
    arch, _, kind = args["model"].rpartition("-")
    label = (ARCH_NAMES.get(arch, arch) + TYPE_NAMES[kind] if arch and kind in TYPE_NAMES
             else args["model"])
    return f"{args['desc']}{label}" if args.get("desc") else label


def run_arguments(args: dict) -> dict:
    """The results-relevant arguments of a run, flat ('pthresh', 'seed', 'num_samples', ...),
    from its run key (of a file read by `load_run`): every LSTSettings field, the defaults
    where the key leaves one out, as the fixed schedule does with the adaptive one's."""
    key = args["run_key"]
    flat = {k: v for k, v in key.items() if k != "settings"}
    flat.setdefault("restarts", 1)  # a run key leaves out restarts = 1
    flat.setdefault("protocol", "ours")  # and the protocol of ours
    settings = LSTSettings().as_dict(complete=True)
    settings.update(key.get("settings", {}))  # a setting a run key leaves out has its default
    flat.update(settings)
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
    # other models have other weights (and other judges), and what a run measured besides its
    # walks, or on how many sources (the tables show the count), does not change the walks:
    # name these only where one model's runs differ
    implied = {"weights", "weights_file", "transfer_models", "transfer_weights",
               "transfer_weights_files", "num_samples", "get_final_imgs", "matched_fractions",
               "get_layers", "layers", "batch_size"}
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


def _pair_columns(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(use, sources): the run's kept pairs as a boolean mask over its pair arrays ((N,R)
    full_eval, (K,K) examples without the diagonal), and the source of every pair (same shape)."""
    res = run.results
    kept = np.asarray(res["kept"], dtype=bool)
    if run.kind == "examples":
        kept = kept & ~np.eye(len(kept), dtype=bool)
    sources = np.broadcast_to(np.arange(kept.shape[0])[:, None], kept.shape)
    return kept, sources


def _table1_values(run: Run, key: str) -> np.ndarray:
    """A Table 1 column as a pair array: init_confs of an examples run is one per source."""
    value = np.asarray(run.results[key])
    if run.kind == "examples" and key == "init_confs":
        return np.broadcast_to(value[:, None], (len(value), len(value)))
    return value


def table_cells(runs: list[Run], ci: bool = False) -> dict[str, list[tuple[list, list]]]:
    """Every table these runs allow, by table: "1" (full_eval), "2" (triangles), "2b" (limbs
    and chords), "2c" (limbs, chords and triangles at matched progress, a row per fraction),
    "3" (transfer), "4" (restarts), "5" (layer scores), "examples" (Table 1 over example
    pairs). Each row is
    (head, estimates): head as TABLE[table].head (Tables 2 and 2b: pairs = triangles, chords;
    2c: sources with two walks at f), estimates (`lst.uncertainty.Estimate`, with the 95%
    interval over sources when ci) in TABLE[table].columns order. all_confs runs give no row."""
    shown = [r for r in runs if r.kind in ("full_eval", "examples")]
    rows = {"1": [], "2": [], "2b": [], "2c": [], "3": [], "4": [], "5": [], "examples": []}
    for label, run in zip(labels(shown), shown):
        res = run.results
        use, sources = _pair_columns(run)
        cells = [estimate(_table1_values(run, key)[use], sources[use], interval=ci)
                 for _, key in TABLE1]
        n = cells[1]  # final conf.: one value per kept pair
        rows["1" if run.kind == "full_eval" else "examples"].append(
            ([label, run.args["dataset"], n.sources, n.pairs], cells))
        rows["3"] += _transfer_rows(label, run, use, sources, ci)
        if "restart_spread" in res:
            stats = restart_stats(res, use)
            cells = [estimate(stats[key], sources[use], interval=ci) for _, key in TABLE4]
            rows["4"].append(([label, run.kind, res["restart_final_confs"].shape[-1],
                               cells[0].sources, cells[0].pairs], cells))
        rows["5"] += _layer_rows(label, run, use, sources, ci)
        for fraction, stats in res.get("matched_stats", {}).items():
            nan = np.full(len(stats["reached"]), np.nan)
            cells = [estimate(stats.get(key, nan), interval=ci) for _, key in TABLE2C]
            rows["2c"].append(([label, run.args["dataset"], fraction, cells[1].sources], cells))
        per_source = {"2": (res.get("hull_stats"), TABLE2), "2b": (res.get("segment_stats"), TABLE2B)}
        for table, (stats, columns) in per_source.items():
            if stats is None:
                continue
            cells = [estimate(stats[key], interval=ci) for _, key in columns]
            n_pairs = math.comb(int(run_arguments(run.args).get("rounds", 2)), 2)
            rows[table].append(([label, run.args["dataset"], cells[0].sources,
                                 cells[0].sources * n_pairs], cells))
    return rows


def _layer_rows(label: str, run: Run, use: np.ndarray, sources: np.ndarray,
                ci: bool) -> list[tuple[list, list]]:
    """Table 5 rows of one run with layer scores: per layer, its depth (index / (L-1)), the
    score at the blind spot and its mean over the first, middle and last third of the recorded
    iterates, over kept pairs."""
    res = run.results
    if "layer_scores" not in res:
        return []
    names = list(res["layer_names"])
    at_end = np.asarray(res["layer_scores"], dtype=np.float64)[use]  # (P,L)
    path = np.asarray(res["layer_scores_over_path"], dtype=np.float64)[use]  # (P,R,L)
    thirds = np.array_split(np.arange(path.shape[1]), 3)
    out = []
    for k, name in enumerate(names):
        columns = [at_end[:, k]] + [np.nanmean(path[:, t, k], axis=1) if len(t) else
                                    np.full(len(path), np.nan) for t in thirds]
        cells = [estimate(v, sources[use], interval=ci) for v in columns]
        depth = k / max(len(names) - 1, 1)
        out.append(([label, run.kind, name, f"{depth:.2f}", cells[0].sources, cells[0].pairs],
                    cells))
    return out


def layer_curves(runs: list[Run]) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(label, depth, mean, low, high) for every run with layer scores: the score at the blind
    spot against relative depth (layer index / (L-1)), mean over kept pairs with its 95%
    bootstrap interval over sources."""
    with_scores = [r for r in runs if r.kind in ("full_eval", "examples")
                   and "layer_scores" in r.results]
    out = []
    for label, run in zip(labels(with_scores), with_scores):
        use, sources = _pair_columns(run)
        scores = np.asarray(run.results["layer_scores"], dtype=np.float64)[use]
        cells = [estimate(scores[:, k], sources[use]) for k in range(scores.shape[1])]
        depth = np.arange(scores.shape[1]) / max(scores.shape[1] - 1, 1)
        out.append((label, depth, *_band(cells)))
    return out


def table_rows(runs: list[Run], pm: str = "±", ci: bool = False) -> dict[str, list]:
    """`table_cells` as text rows: [head..., cell, ...], a cell mean ± std or, with ci, mean
    [95% interval over sources]."""
    return {table: [head + [c.show(ci, pm) for c in cells] for head, cells in rows]
            for table, rows in table_cells(runs, ci).items()}


def table_records(runs: list[Run], ci: bool = False) -> list[dict]:
    """One flat record per run and table, every column as numbers, for pandas and spreadsheets:
    table, the table's head columns, then for each column its mean, std and, with ci, the 95%
    interval's low and high ("SSIM", "SSIM std", "SSIM low", "SSIM high")."""
    records = []
    for table, rows in table_cells(runs, ci).items():
        for head, cells in rows:
            record = {"table": table, **dict(zip(TABLE[table].head, head))}
            for (name, _), cell in zip(TABLE[table].columns, cells):
                record[name], record[f"{name} std"] = cell.mean, cell.std
                if ci:
                    record[f"{name} low"], record[f"{name} high"] = cell.low, cell.high
            records.append(record)
    return records


def _transfer_rows(label: str, run: Run, use: np.ndarray, sources: np.ndarray,
                   ci: bool) -> list[tuple[list, list]]:
    """Table 3 rows of one run: for each judge (the model itself first), its view of the blind
    spots and of the raw targets of the kept pairs."""
    res = run.results
    if "transfer_models" not in res:
        return []
    judges = [run.args["model"]] + list(res["transfer_models"])
    src = np.broadcast_to(np.asarray(res["labels"])[:, None], use.shape)
    tgt = (np.asarray(res["target_labels"]) if run.kind == "full_eval"
           else np.broadcast_to(np.asarray(res["labels"])[None, :], use.shape))
    out = []
    for j, name in enumerate(judges):
        for images, prefix in TABLE3_IMAGES:
            if f"{prefix}pred" not in res:  # an optional field (lst.schema)
                continue
            pred = np.asarray(res[f"{prefix}pred"])[..., j][use]
            values = [pred == src[use], pred == tgt[use], (pred != src[use]) & (pred != tgt[use]),
                      np.asarray(res[f"{prefix}source_conf"])[..., j][use]]
            cells = [estimate(np.asarray(v, dtype=float), sources[use], interval=ci)
                     for v in values]
            judge = model_label({"model": name}) + (" (itself)" if j == 0 else "")
            out.append(([label, run.kind, judge, images, cells[0].sources, cells[0].pairs],
                        cells))
    return out


def format_tables(runs: list[Run], fmt: str = "plain", ci: bool = False) -> str:
    """The tables of these runs as text (fmt: plain, github, latex or html), titles included;
    ci: 95% bootstrap intervals over sources instead of ± std."""
    pm = r"$\pm$" if fmt == "latex" else "±"
    rows = table_rows(runs, pm, ci)
    spread = "mean [95% CI, sources resampled]" if ci else "mean ± std"

    def table(table_rows: list, headers: list[str]) -> str:
        if fmt == "latex":
            headers = [h.replace("_", r"\_").replace(">", "$>$") for h in headers]
        return tabulate(table_rows, headers=headers, tablefmt=FORMATS[fmt])

    sections = []
    for spec in TABLES:
        if rows[spec.key]:
            title = spec.title.format(spread=spread, grid=_grid_note(runs) if spec.key == "2" else "")
            sections.append(f"{title}\n{table(rows[spec.key], spec.headers)}")
        elif spec.key == "2" and rows["1"]:
            sections.append(NO_TABLE2)
    return "\n\n".join(sections)


def _grid_note(runs: list[Run]) -> str:
    """Table 2's title note on its grid points: all 66, the paper's 64, or which rows use 64."""
    shown = [r for r in runs if r.kind in ("full_eval", "examples")]
    with_table2 = [(label, r.results.get("triangle_points") == 64)
                   for label, r in zip(labels(shown), shown) if "hull_stats" in r.results]
    grid, paper = len(triangle_grid()), int(paper_grid_points().sum())
    if not any(p for _, p in with_table2):
        return f" at its {grid} grid points"
    note = (f" at the paper's {paper} grid points (its float grid drops (0.8, 0.2) and "
            "(0.9, 0.1); print_tables.py --triangle_points 66 shows all)")
    if all(p for _, p in with_table2):
        return note
    return note + (f" in the rows {', '.join(label for label, p in with_table2 if p)}, at all "
                   f"{grid} in the others")


def matched_curves(runs: list[Run], key: str = "chords_kept_0.05"
                   ) -> list[tuple[str, list[str], np.ndarray, np.ndarray, np.ndarray]]:
    """(label, fractions, mean, low, high) for every full_eval with matched_stats: `key` of
    Table 2c at each fraction (and "final"), mean over sources with its 95% bootstrap
    interval over sources. The label says where the blind spots are: their mean progress."""
    with_stats = [r for r in runs if r.kind == "full_eval" and "matched_stats" in r.results]
    out = []
    for label, run in zip(labels(with_stats), with_stats):
        use, _ = _pair_columns(run)
        progress = 1 - np.asarray(run.results["distance_left"], dtype=np.float64)[use].mean()
        label = f"{label} (blind spots at f = {progress:.2f})"
        stats = run.results["matched_stats"]
        fractions = list(stats)
        cells = [estimate(stats[f].get(key, np.full(len(stats[f]["reached"]), np.nan)))
                 for f in fractions]
        out.append((label, fractions, *_band(cells)))
    return out


def delta_curves(runs: list[Run]) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(label, mean, low, high) over `DELTA_CURVE` for every run with triangle confidences
    (a full_eval's _all_confs.pkl): the fraction of triangle points above p_src - delta, mean
    over sources with its 95% bootstrap interval over sources."""
    with_confs = [r for r in runs if r.kind == "all_confs"]
    out = []
    for label, run in zip(labels(with_confs), with_confs):
        per_source = delta_curve(run.results["hull_confs"])
        cells = [estimate(per_source[:, k]) for k in range(len(DELTA_CURVE))]
        out.append((label, *_band(cells)))
    return out


def _band(cells: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A curve's estimates (`lst.uncertainty.Estimate`, one per point) as its mean, low and
    high arrays."""
    return tuple(np.array([getattr(c, f) for c in cells]) for f in ("mean", "low", "high"))
