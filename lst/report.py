"""One HTML page for every run in an output folder: its arguments, its tables and its figures.

`write_report(folder, runs)` writes {folder}/report.html. Figures are linked by relative paths
(the run's PNGs and GIFs beside its results file, named from its stem, and the example target
images), so the page opens in a browser from disk, without a server.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

from .results import atomic_write
from .tables import Run, format_tables, labels, run_arguments, show_value

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-top: 1px solid #ccc;
padding-top: 1em; } h3 { font-size: 1em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } .args td:first-child { font-family: monospace; color: #555; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #eee; }
figure.small img { max-width: 96px; image-rendering: pixelated; }
figcaption { font-size: 0.75em; color: #666; max-width: 560px; word-break: break-all; }
.muted { color: #777; font-size: 0.85em; }
"""


def _figures(folder: Path, run: Run) -> list[Path]:
    """The run's figures: files named from its stem with an image suffix, sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(run.stem + "_") and p.suffix in (".png", ".gif"))


def _targets(folder: Path, run: Run) -> list[Path]:
    """The example images of an examples run (its target_files), in class order."""
    if run.kind != "examples":
        return []
    found = [folder / name for name in run.results["target_files"]]
    return [p for p in found if p.is_file()]


def _arguments_table(run: Run) -> str:
    arguments = run_arguments(run.args)
    origin = run.args.get("provenance", {})
    rows = [(k, show_value(v)) for k, v in sorted(arguments.items())]
    rows += [(f"provenance.{k}", show_value(v) if not isinstance(v, dict) else
              ", ".join(f"{a} {b}" for a, b in v.items())) for k, v in origin.items()]
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    return f'<table class="args">{cells}</table>'


def _figure(path: Path, folder: Path, small: bool = False) -> str:
    rel = html.escape(path.relative_to(folder).as_posix(), quote=True)
    cls = ' class="small"' if small else ""
    return (f'<figure{cls}><a href="{rel}"><img src="{rel}" alt="{rel}"></a>'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def write_report(folder: str | Path, runs: list[Run], explorers: list[Path] = (),
                 explorer_note: str | None = None) -> Path:
    """Write {folder}/report.html with every examples and full_eval run of `runs` (their files
    in `folder`), linking the explorer pages `explorers` (`lst.explorer.write_explorers`, in
    `folder`) or showing `explorer_note`; returns its path."""
    folder = Path(folder)
    shown = [r for r in runs if r.kind in ("full_eval", "examples")]
    parts = [f"<h1>Level Set Traversal runs in {html.escape(str(folder))}</h1>",
             f'<p class="muted">{len(shown)} run(s); written '
             f"{time.strftime('%Y-%m-%d %H:%M')} by print_tables.py --html</p>"]
    if explorers:
        links = ", ".join(f'<a href="{html.escape(p.name, quote=True)}">{html.escape(p.name)}</a>'
                          for p in explorers)
        parts.append(f"<p>Walk the recorded paths, the straight lines and the triangles: {links}"
                     "</p>")
    elif explorer_note:
        parts.append(f'<p class="muted">{html.escape(explorer_note)}</p>')
    if shown:
        parts += ["<h2>All runs</h2>", _tables_html(shown)]
    for label, run in zip(labels(shown), shown):
        mode = "examples" if run.kind == "examples" else "full_eval"
        parts += [f'<h2 id="{html.escape(run.stem, quote=True)}">{html.escape(label)} '
                  f"<span class=\"muted\">({mode}, {html.escape(run.args['dataset'])})</span></h2>",
                  f'<p class="muted">{html.escape(run.path.name)}</p>',
                  _tables_html([run]), "<h3>Arguments</h3>", _arguments_table(run)]
        targets = _targets(folder, run)
        if targets:
            parts += ["<h3>Example images</h3>"] + [_figure(p, folder, small=True) for p in targets]
        figures = _figures(folder, run)
        if figures:
            parts += ["<h3>Figures</h3>"] + [_figure(p, folder) for p in figures]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>LST report: {html.escape(folder.name)}</title><style>{STYLE}</style>"
            "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return atomic_write(folder / "report.html", lambda f: f.write(page.encode("utf-8")))


def _tables_html(runs: list[Run]) -> str:
    """The tables of these runs as HTML, each title a paragraph."""
    text = format_tables(runs, "html")
    return "\n".join(line if line.startswith("<") or not line else f"<p>{html.escape(line)}</p>"
                     for line in text.split("\n"))
