"""The figures of the paper's kind (grid, star, triangles, path, widths) from an examples
results dict (see `lst.experiments.run_examples`), the path as an animation, and the delta curve
of several full_eval runs.

Every function takes the results (numpy arrays), writes one PNG (or GIF) and returns its path.
Indices: blind_spots[s, t] is source s's blind spot towards target t; K = number of classes.
"""
from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402
from matplotlib.tri import Triangulation  # noqa: E402

from .hull import triangle_grid  # noqa: E402
from .results import atomic_write  # noqa: E402

DPI = 150


def _hwc(image: np.ndarray) -> np.ndarray:
    """(C,H,W) float in [0,1] or uint8, C = 3 or 1 (grayscale) -> (H,W,3) float for imshow."""
    image = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image
    return np.clip(np.broadcast_to(image, (3, *image.shape[1:])).transpose(1, 2, 0), 0, 1)


def _save(fig, path: Path) -> Path:
    """Write the figure as a PNG atomically (never a half-written file) and close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def plot_grid(results: dict, class_names: Sequence[str], path: Path) -> Path:
    """Column j = source j; row i = its blind spot towards target i; originals on the diagonal
    (framed). Under each image: the model's confidence in the source's class."""
    spots, confs = results["blind_spots"], results["final_confs"]
    k = len(spots)
    fig, axes = plt.subplots(k, k, figsize=(1.6 * k, 1.75 * k + 0.4), squeeze=False)
    for i in range(k):  # target / row
        for j in range(k):  # source / column
            ax = axes[i, j]
            ax.imshow(_hwc(spots[j, i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            diagonal = i == j
            for spine in ax.spines.values():
                spine.set_visible(diagonal)
                spine.set_edgecolor("tab:red")
                spine.set_linewidth(3)
            ax.set_xlabel(f"{confs[j, i]:.2f}", fontsize=9, labelpad=2,
                          fontweight="bold" if diagonal else "normal")
            if i == 0:
                ax.set_title(f"source: {class_names[j]}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"target: {class_names[i]}", fontsize=8)
    fig.suptitle("LST blind spots (columns: source; rows: target); source-class confidence below",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


_VERTICES = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def _triangle_panel(ax, confs: np.ndarray, images: Sequence[np.ndarray], labels: Sequence[str]):
    xy = triangle_grid(int(round((np.sqrt(8 * len(confs) + 1) - 3) / 2))).numpy() @ _VERTICES
    tri = Triangulation(xy[:, 0], xy[:, 1])
    filled = ax.tricontourf(tri, confs, levels=np.linspace(0, 1, 21), cmap="viridis",
                            vmin=0, vmax=1)
    ax.triplot(tri, color="white", linewidth=0.2, alpha=0.4)
    size = 0.38
    offsets = [(-size - 0.02, -size - 0.02), (0.02, -size - 0.02), (-size / 2, 0.02)]
    for vertex, (dx, dy), image, label in zip(_VERTICES, offsets, images, labels):
        inset = ax.inset_axes([vertex[0] + dx, vertex[1] + dy, size, size], transform=ax.transData)
        inset.imshow(_hwc(image), interpolation="nearest")
        inset.set_xticks([])
        inset.set_yticks([])
        inset.set_title(label, fontsize=6, pad=1)
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(-0.45, 1.32)
    ax.set_aspect("equal")
    ax.axis("off")
    return filled


def plot_triangles(results: dict, class_names: Sequence[str], source: int, path: Path) -> Path:
    """Source-class confidence over the triangles (source, blind spot a, blind spot b) for every
    pair of the source's blind spots, as filled contours with the three images at the vertices."""
    pairs, confs = results["hull_pairs"], results["hull_confs"][source]
    spots = results["blind_spots"][source]
    valid = [m for m, (a, b) in enumerate(pairs) if source not in (a, b)]
    cols = min(3, len(valid))
    rows = int(np.ceil(len(valid) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.1 * rows), squeeze=False)
    filled = None
    for ax, m in zip(axes.flat, valid):
        a, b = pairs[m]
        filled = _triangle_panel(ax, confs[m], [results["images"][source], spots[a], spots[b]],
                                 [f"source: {class_names[source]}", f"to {class_names[a]}",
                                  f"to {class_names[b]}"])
    for ax in axes.flat[len(valid):]:
        ax.axis("off")
    fig.colorbar(filled, ax=axes, shrink=0.8, ticks=np.linspace(0, 1, 6),
                 label=f"confidence in '{class_names[source]}'")
    fig.suptitle(f"Confidence over triangles spanned by a '{class_names[source]}' source and two "
                 "of its blind spots", fontsize=9)
    return _save(fig, path)


def plot_star(results: dict, path: Path) -> Path:
    """Source-class confidence along the straight lines from each source to its blind spots
    ("limbs") and, for contrast, to the raw targets."""
    k = len(results["limbs"])
    off = ~np.eye(k, dtype=bool)
    limbs, straight = results["limbs"][off], results["straight"][off]
    t = np.linspace(0, 1, limbs.shape[1])
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for curve in limbs:
        ax.plot(t, curve, color="tab:blue", alpha=0.25, linewidth=0.8)
    for curve in straight:
        ax.plot(t, curve, color="tab:red", alpha=0.25, linewidth=0.8)
    ax.plot(t, limbs.mean(0), color="tab:blue", linewidth=2.2, label="source → blind spot (mean)")
    ax.plot(t, straight.mean(0), color="tab:red", linewidth=2.2, label="source → target (mean)")
    ax.set_xlabel("position along the line")
    ax.set_ylabel("source-class confidence")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Source-class confidence along straight lines from each source",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_confs_over_path(results: dict, path: Path) -> Path:
    """Source- and target-class confidence over the LST iterations, every pair and the mean."""
    k = len(results["confs_over_path"])
    off = ~np.eye(k, dtype=bool)
    confs = results["confs_over_path"][off]  # (pairs, R, 2)
    iters = results["log_iters"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for which, color, label in ((0, "tab:blue", "source class"), (1, "tab:orange", "target class")):
        for curve in confs[:, :, which]:
            ax.plot(iters, curve, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(iters, confs[:, :, which].mean(0), color=color, linewidth=2.2, label=label)
    ax.set_xlabel("LST iteration")
    ax.set_ylabel("confidence")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Confidence over the LST path", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_widths(results: dict, distances: Sequence[float], path: Path) -> Path:
    """Path widths: source-class confidence at distance r sideways to the path, against the
    iteration (mean over pairs of the 5th-95th percentile band) and against r (last record)."""
    k = len(results["widths"])
    off = ~np.eye(k, dtype=bool)
    widths = results["widths"][off]  # (pairs, R, D+1, 2)
    iters = results["log_iters"]
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(distances)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(iters, widths[:, :, 0, 0].mean(0), color="black", linewidth=2, label="on the path")
    for d, (r, color) in enumerate(zip(distances, colors), start=1):
        low, high = widths[:, :, d, 0].mean(0), widths[:, :, d, 1].mean(0)
        left.fill_between(iters, low, high, color=color, alpha=0.35, label=f"r = {r:g}")
    left.set_xlabel("LST iteration")
    left.set_ylabel("source-class confidence")
    left.set_ylim(-0.02, 1.02)
    left.legend(fontsize=7, ncol=2)
    left.set_title("5th-95th percentile over random orthogonal directions", fontsize=9)
    radii = np.concatenate([[0.0], np.asarray(distances, dtype=float)])
    last = widths[:, -1]  # (pairs, D+1, 2)
    right.fill_between(radii, last[:, :, 0].mean(0), last[:, :, 1].mean(0), color="tab:purple",
                       alpha=0.35, label="5th-95th percentile")
    right.plot(radii, last[:, :, 0].mean(0), color="tab:purple")
    right.plot(radii, last[:, :, 1].mean(0), color="tab:purple")
    right.set_xlabel("distance r (L2) from the last recorded iterate")
    right.set_ylim(-0.02, 1.02)
    right.legend(fontsize=7)
    right.set_title(f"at iteration {int(iters[-1])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def walk_frames(results: dict, source: int, target: int, limit: int | None = None) -> list[int]:
    """The recordings of one walk to show: those taken before it stopped (under the adaptive
    schedule a stopped walk's later recordings repeat its last iterate; `passes` - 1 is the
    steps it took), at most `limit` of them spread evenly, the first always."""
    iters = np.asarray(results["log_iters"])
    passes = results.get("passes")
    taken = (np.flatnonzero(iters < passes[source, target] - 1) if passes is not None
             else np.arange(len(iters)))
    if len(taken) == 0:
        taken = np.arange(min(1, len(iters)))
    if limit is not None and len(taken) > limit:
        taken = taken[np.unique(np.linspace(0, len(taken) - 1, limit).round().astype(int))]
    return taken.tolist()


def plot_path_strip(results: dict, class_names: Sequence[str], source: int, target: int,
                    path: Path, max_frames: int = 12) -> Path:
    """The recorded images along one LST path (at most `max_frames`, `walk_frames`) and the
    blind spot, with their source-class confidence."""
    images = results["images_over_path"][source, target]  # (R,C,H,W) uint8
    iters = results["log_iters"]
    confs = results.get("confs_over_path")
    shown = walk_frames(results, source, target, max_frames) + ["final"]
    fig, axes = plt.subplots(1, len(shown), figsize=(1.3 * len(shown), 1.9), squeeze=False)
    for ax, r in zip(axes[0], shown):
        if r == "final":
            ax.imshow(_hwc(results["blind_spots"][source, target]), interpolation="nearest")
            conf, title = results["final_confs"][source, target], "final"
        else:
            ax.imshow(_hwc(images[r]), interpolation="nearest")
            conf = confs[source, target, r, 0] if confs is not None else np.nan
            title = f"it {int(iters[r])}"
        ax.set_title(title, fontsize=7)
        ax.set_xlabel(f"{conf:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"LST path from '{class_names[source]}' towards '{class_names[target]}' "
                 f"(confidence in '{class_names[source]}' below)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def animate_path(results: dict, class_names: Sequence[str], source: int, target: int,
                 path: Path, fps: float = 4.0) -> Path:
    """A GIF of one LST path: each recorded iterate (then the blind spot) beside the target image
    and the source- and target-class confidence up to that step (matplotlib's animation with
    Pillow; about 100 KB for 21 frames of a 32x32 image)."""
    taken = walk_frames(results, source, target)
    images = results["images_over_path"][source, target][taken]  # (R',C,H,W) uint8
    confs = results["confs_over_path"][source, target][taken]  # (R',2)
    iters = np.asarray(results["log_iters"])[taken]
    passes = results.get("passes")
    final_iter = (int(passes[source, target]) - 1 if passes is not None else
                  int(iters[-1] + (iters[1] - iters[0] if len(iters) > 1 else 1)))
    frames = [(_hwc(img), f"iteration {int(it)}") for img, it in zip(images, iters)]
    frames.append((_hwc(results["blind_spots"][source, target]), f"blind spot (it. {final_iter})"))
    fig, (shown, goal, curve) = plt.subplots(1, 3, figsize=(7.2, 2.5), dpi=80,
                                             gridspec_kw={"width_ratios": [1, 1, 1.6]})
    picture = shown.imshow(frames[0][0], interpolation="nearest")
    goal.imshow(_hwc(results["images"][target]), interpolation="nearest")
    goal.set_title(f"target: {class_names[target]}", fontsize=8)
    for ax in (shown, goal):
        ax.set_xticks([])
        ax.set_yticks([])
    src_line, = curve.plot([], [], color="tab:blue", label=f"p({class_names[source]})")
    tgt_line, = curve.plot([], [], color="tab:orange", label=f"p({class_names[target]})")
    curve.set_xlim(0, final_iter)
    curve.set_ylim(-0.02, 1.02)
    curve.set_xlabel("LST iteration", fontsize=8)
    curve.legend(fontsize=7, loc="center right")
    curve.tick_params(labelsize=7)
    fig.tight_layout()

    def draw(k: int):
        picture.set_data(frames[k][0])
        shown.set_title(frames[k][1], fontsize=8)
        upto = min(k + 1, len(iters))
        xs = list(iters[:upto]) + ([final_iter] if k == len(iters) else [])
        last = [results["final_confs"][source, target]] if k == len(iters) else []
        src_line.set_data(xs, list(confs[:upto, 0]) + last)
        tgt_line.set_data(iters[:upto], confs[:upto, 1])  # not recorded at the blind spot
        return picture, src_line, tgt_line

    animation = FuncAnimation(fig, draw, frames=len(frames), blit=False)

    def write(f) -> None:  # Pillow picks the format from the name: write a .gif, then copy it
        with tempfile.TemporaryDirectory() as tmp:
            gif = Path(tmp) / "path.gif"
            animation.save(gif, writer=PillowWriter(fps=fps))
            f.write(gif.read_bytes())

    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)
    return path


def _band_line(ax, x: np.ndarray, mean: np.ndarray, low: np.ndarray, high: np.ndarray,
               label: str, marker: str | None = None) -> None:
    """One run's mean line with its 95% band (same colour, translucent)."""
    line, = ax.plot(x, mean, marker=marker, linewidth=1.8, label=textwrap.fill(label, 45))
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.25, linewidth=0)


def _finish_fraction_plot(fig, ax, xlabel: str, ylabel: str, title: str, path: Path,
                          legend: str = "best") -> Path:
    """Labels, a [0,1] y-axis, legend and title; save."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc=legend)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_delta_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                      deltas: np.ndarray, path: Path) -> Path:
    """The delta curve: fraction of triangle points with p > p_src - delta against delta, one
    line per run (label, mean, low, high over deltas) with its 95% band over sources."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, mean, low, high in curves:
        _band_line(ax, deltas, mean, low, high, label)
    ax.set_xscale("symlog", linthresh=1e-3, linscale=0.4)  # most of the change is at small delta
    ax.set_xticks([0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlim(0, 1)
    return _finish_fraction_plot(
        fig, ax, r"$\delta$ (linear below 0.001, logarithmic above)",
        r"fraction of points with $p > p_{src} - \delta$",
        "Confidence over triangles (mean over sources, 95% bootstrap band)", path, "lower right")


def plot_matched_curves(curves: Sequence[tuple[str, list[str], np.ndarray, np.ndarray, np.ndarray]],
                        path: Path, what: str = r"chords kept ($\delta$ = 0.05)") -> Path:
    """Geometry at matched progress: a Table 2c column (default: chords kept within 0.05)
    against the fraction f of the way to the target, "final" (the blind spots) last, one line
    per run (label, fractions, mean, low, high) with its 95% band over sources."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, fractions, mean, low, high in curves:
        _band_line(ax, np.arange(len(fractions)), mean, low, high, label, marker="o")
    longest = max((c[1] for c in curves), key=len)
    ax.set_xticks(np.arange(len(longest)), [f if f == "final" else f"f = {f}" for f in longest])
    return _finish_fraction_plot(
        fig, ax, "progress towards the target, 1 - |x - x_t| / |x_s - x_t|", what,
        "Convexity at matched progress (mean over sources, 95% bootstrap band)", path)


def plot_layer_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                      path: Path) -> Path:
    """Layer scores at the blind spots against relative depth, one line per run (label, depth,
    mean, low, high) with its 95% band over sources: 1 = the source's representation, 0 = the
    target's."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, depth, mean, low, high in curves:
        _band_line(ax, depth, mean, low, high, label, marker="o")
    return _finish_fraction_plot(
        fig, ax, "relative depth of the layer (input side 0, head side 1)",
        "layer score (1 = like the source, 0 = like the target)",
        "Where blind spots become the source (mean over pairs, 95% band over sources)", path)


def plot_examples(results: dict, class_names: Sequence[str], out_dir: Path, stem: str,
                  width_distances: Sequence[float] = ()) -> list[Path]:
    """Every figure the examples results allow; returns the paths written."""
    out_dir = Path(out_dir)
    paths = [plot_grid(results, class_names, out_dir / f"{stem}_grid.png"),
             plot_star(results, out_dir / f"{stem}_star.png")]
    for s in range(len(results["classes"])):
        paths.append(plot_triangles(results, class_names, s,
                                    out_dir / f"{stem}_triangles_source{results['classes'][s]}.png"))
    if not len(results["log_iters"]):  # no iterate recorded (iters 0): no path figures
        return paths
    if "confs_over_path" in results:
        paths.append(plot_confs_over_path(results, out_dir / f"{stem}_confs_over_path.png"))
    if "widths" in results:
        paths.append(plot_widths(results, width_distances, out_dir / f"{stem}_widths.png"))
    if "images_over_path" in results:
        paths.append(plot_path_strip(results, class_names, 0, 1, out_dir / f"{stem}_path.png"))
        if "confs_over_path" in results:  # optional in files of before (lst.schema)
            paths.append(animate_path(results, class_names, 0, 1, out_dir / f"{stem}_path.gif"))
    return paths
