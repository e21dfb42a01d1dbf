"""Explorer pages: walk a recorded LST path in a browser, beside the straight line to the target,
and look inside the triangles between a source and two of its blind spots.

`write_explorers(folder, runs)` writes one self-contained page, {folder}/explore_{stem}.html, for
every group of runs on the same pairs (e.g. a normal and an adversarially trained model): examples
runs that recorded their paths (`--get_images`), and full_eval runs with their blind spots and
sources (`--get_final_imgs`; their first MAX_SOURCES sources). It returns the pages, or a one-line
note for a folder with none. A page is one HTML file: its script and style are inline
(lst/explorer.js, lst/explorer.css) and its images are data URIs, so it opens from disk with no
server and no network.

What each view shows and where its numbers come from:
- the path: the recorded iterates `images_over_path` (8-bit, as recorded; those taken before
  the walk stopped, `lst.plots.walk_frames`), `confs_over_path` (source and target class) and
  `distance_over_path`, all recorded by the run; a full_eval without `--get_images` has only
  its two ends, the source and the blind spot;
- the straight line x_s + f (x_t - x_s) at the same progress f = 1 - distance left: the image is
  blended by the browser from the source and target (exact up to 8-bit rounding); its
  source-class confidence is interpolated linearly between the 21 points the run evaluated along
  that line (examples: `straight`; full_eval: `straight_confs` of _all_confs.pkl), not a new
  model evaluation;
- the triangles: the 66 confidences the run evaluated (`hull_confs`); the image at a point is
  blended by the browser from the source and the two blind spots (stored 8-bit).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .data import DATASETS
from .experiments import to_uint8
from .hull import triangle_grid
from .plots import walk_frames
from .results import atomic_write
from .tables import Run, labels

DISPLAY = 192  # images are shown about this many pixels wide (integer zoom of small images)
LOSSLESS_MAX = 64 * 64  # images up to this many pixels are stored as PNG, larger ones as JPEG
MAX_SOURCES = 24  # a full_eval's page shows its first sources (rows), all rounds of each
JPEG_QUALITY = 90
HERE = Path(__file__).resolve().parent


def explorable(run: Run) -> bool:
    """Whether the explorer can show a run: an examples run that recorded the images along its
    paths (--get_images), or a full_eval run with its blind spots and sources (--get_final_imgs)."""
    res = run.results
    if run.kind == "examples":
        return res.get("images_over_path") is not None
    return run.kind == "full_eval" and res.get("source_images") is not None


def explorer_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs the explorer can show (`explorable`), grouped by their pairs: the same kind,
    dataset and images (examples: classes and example images; full_eval: sources and targets).
    Groups and runs keep the order of `runs`."""
    groups: dict[tuple, list[Run]] = {}
    for run in filter(explorable, runs):
        res = run.results
        if run.kind == "examples":
            images, pairs = np.asarray(res["images"]), np.asarray(res["classes"])
        else:
            images, pairs = np.asarray(res["source_images"]), np.asarray(res["target_indices"])
        digest = hashlib.sha256(to_uint8(images).tobytes() + pairs.tobytes()).hexdigest()
        groups.setdefault((run.kind, run.args.get("dataset"), images.shape, digest), []).append(run)
    return list(groups.values())


def write_explorers(folder: str | Path, runs: list[Run]) -> tuple[list[Path], str | None]:
    """Write an explorer page for every group of `explorer_groups(runs)` into `folder` (a
    full_eval's triangles come from its _all_confs.pkl among `runs`).

    Returns (pages, note): the pages written, and a one-line note when no run has path data
    (then nothing is written)."""
    folder = Path(folder)
    groups = explorer_groups(runs)
    if not groups:
        return [], ("no explorer: no run here recorded its path (examples runs with --get_images, "
                    "full_eval runs with --get_final_imgs)")
    companions = {r.stem: r for r in runs if r.kind == "all_confs"}
    return [write_explorer(folder / f"explore_{group[0].stem}.html", group, companions)
            for group in groups], None


def write_explorer(path: Path, runs: list[Run], companions: dict[str, Run] | None = None) -> Path:
    """One explorer page at `path` for runs on the same pairs (`explorer_groups`); companions:
    all_confs runs by stem (a full_eval's triangles)."""
    data = page_data(runs, companions or {})
    script = (HERE / "explorer.js").read_text(encoding="utf-8")
    style = (HERE / "explorer.css").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = (f"LST explorer: {', '.join(r['label'] for r in data['runs'])} on {data['dataset']}"
             f" ({runs[0].kind})")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<div id=\"app\"></div>\n"
            f"<script type=\"application/json\" id=\"data\">{payload}</script>\n"
            f"<script>{script}</script>\n</body></html>\n")
    return atomic_write(path, lambda f: f.write(page.encode("utf-8")))


def page_data(runs: list[Run], companions: dict[str, Run] | None = None) -> dict:
    """Everything the page shows, as JSON-ready values (NaN as None, images as data URIs).

    images: the pictures pairs refer to by index (examples: the K example images; full_eval:
    the first MAX_SOURCES sources), names: their labels; rows: the image of each grid row;
    columns: the column labels (examples: target classes; full_eval: rounds), column_images:
    the image of each column where it has one (examples). runs: `run_data` of each run."""
    first, kind = runs[0].results, runs[0].kind
    info = DATASETS.get(runs[0].args.get("dataset"))

    def name(label) -> str:
        names = info.class_names if info and info.class_names else ()
        return names[int(label)] if int(label) < len(names) else f"class {int(label)}"

    if kind == "examples":
        images = to_uint8(np.asarray(first["images"]))
        names = [name(c) for c in first["classes"]]
        columns, column_images, note = names, list(range(len(names))), None
    else:
        n = len(first["source_indices"])
        images = np.asarray(first["source_images"][:MAX_SOURCES])
        names = [f"{name(c)} #{int(i)}" for c, i in zip(first["labels"], first["source_indices"])]
        columns = [f"round {r}" for r in range(first["target_indices"].shape[1])]
        column_images = None
        note = f"the first {len(images)} of {n} sources" if n > len(images) else None
    height, width = images.shape[-2:]
    zoom = max(1, DISPLAY // width)
    return {"dataset": str(runs[0].args.get("dataset")), "kind": kind, "note": note,
            "width": width * zoom, "height": height * zoom,
            "images": [_data_uri(image) for image in images], "names": names[:len(images)],
            "rows": list(range(len(images))), "columns": columns, "column_images": column_images,
            "triangle": [[round(float(a), 4), round(float(b), 4)]
                         for _, a, b in triangle_grid().numpy()],
            "colormap": [_hex(colormaps["viridis"](v)) for v in np.linspace(0, 1, 11)],
            "runs": [run_data(run, label, len(images), (companions or {}).get(run.stem))
                     for run, label in zip(runs, labels(runs))]}


def run_data(run: Run, label: str, rows: int, companion: Run | None = None) -> dict:
    """One run's pairs [row][column] (None where there is no walk: the diagonal of an
    examples run, a source the model misclassifies, a target not among the rows shown).

    A pair: target, the index of its target image; iters, the iterations of the frames shown;
    strip, those frames side by side in one image (`_walk` or `_ends`); confs (F,2), source-
    and target-class confidence at them (None where not recorded); distance (F,); spot, the
    blind spot (8-bit); final, its confidence; straight (21,), the source-class confidence
    along the straight line (None where not evaluated). triangles[row][m]: the 66
    confidences of hull_pairs[m] (None where not evaluated)."""
    res = run.results
    p0 = np.asarray(res["init_confs"])  # examples (K,); full_eval (N,R), the same in each round
    p0 = p0 if p0.ndim == 1 else p0[:, 0]
    if run.kind == "examples":
        spots, straight = res["blind_spots"], res["straight"]
        hull_pairs, hull = res["hull_pairs"], res["hull_confs"]
        targets = np.tile(np.arange(rows), (rows, 1))
    else:
        spots, extra = res["final_images"], companion.results if companion else {}
        straight, hull_pairs = extra.get("straight_confs"), extra.get("hull_pairs", [])
        hull = extra.get("hull_confs")
        row_of = {int(i): k for k, i in enumerate(res["source_indices"][:rows])}
        targets = np.vectorize(lambda i: row_of.get(int(i), -1))(res["target_indices"][:rows])
    pairs = [[None] * targets.shape[1] for _ in range(rows)]
    for s, t in np.ndindex(rows, targets.shape[1]):
        if targets[s, t] < 0 or (run.kind == "examples" and s == t) or not res["kept"][s, t]:
            continue
        walk = _walk(res, s, t) if res.get("images_over_path") is not None else _ends(res, s, t)
        pairs[s][t] = {"target": int(targets[s, t]), **walk, "spot": _data_uri(spots[s, t]),
                       "final": _float(res["final_confs"][s, t]),
                       "straight": None if straight is None else _floats(straight[s, t])}
    return {"label": label, "model": str(run.args.get("model")), "file": run.path.name,
            "recorded": res.get("images_over_path") is not None,
            "init_confs": _floats(p0[:rows]),
            "pthresh": _float(run.args.get("run_key", {}).get("settings", {}).get("pthresh")),
            "pairs": pairs, "hull_pairs": np.asarray(hull_pairs).tolist(),
            "triangles": [[None if np.isnan(h).all() else _floats(h) for h in hull[s]]
                          if hull is not None else [] for s in range(rows)]}


def _walk(res: dict, s: int, t: int) -> dict:
    """A recorded walk: its iterates before it stopped (`walk_frames`), with what was recorded."""
    frames = walk_frames(res, s, t)
    confs, distance = res.get("confs_over_path"), res.get("distance_over_path")
    return {"iters": [int(i) for i in np.asarray(res["log_iters"])[frames]],
            "strip": _data_uri(np.concatenate(list(res["images_over_path"][s, t, frames]), -1)),
            "confs": _floats(confs[s, t, frames]) if confs is not None else None,
            "distance": _floats(distance[s, t, frames]) if distance is not None else None}


def _ends(res: dict, s: int, t: int) -> dict:
    """A walk without recorded iterates (a full_eval without --get_images): its two ends, the
    source (iteration 0, p0, the whole distance) and the blind spot (its last step)."""
    source = res["source_images"][s]
    return {"iters": [0, max(1, int(res["passes"][s, t]) - 1)],
            "strip": _data_uri(np.concatenate([source, res["final_images"][s, t]], -1)),
            "confs": [[_float(res["init_confs"][s, t]), None], [_float(res["final_confs"][s, t]), None]],
            "distance": [1.0, _float(res["distance_left"][s, t])]}


def _data_uri(image: np.ndarray) -> str:
    """(C,H,W) image, C = 1 or 3, float in [0,1] or uint8 -> a data: URI, PNG when it has at most
    LOSSLESS_MAX pixels per frame of height H (small images stay exact), JPEG otherwise."""
    image = to_uint8(image)
    pixels = image.shape[1] * image.shape[1]  # one square frame: a strip is many of them
    mode = "L" if image.shape[0] == 1 else "RGB"
    picture = Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode)
    buffer = io.BytesIO()
    if pixels <= LOSSLESS_MAX:
        picture.save(buffer, format="PNG", optimize=True)
        kind = "png"
    else:
        picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _float(value) -> float | None:
    value = None if value is None else float(value)
    return None if value is None or math.isnan(value) else round(value, 5)


def _floats(values: np.ndarray) -> list:
    """An array as nested lists of 5-decimal floats, NaN as None."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        return _float(values)
    return [_floats(v) for v in values]


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])
