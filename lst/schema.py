"""The versions of the results files, and the one step that reads every earlier one.

Every results file this tool writes carries args["schema_version"] (`SCHEMA_VERSION`). A file
without one is version 0. `upgrade` brings a file read from disk up to the current version, so
the tables, figures and report read one format only; what changed between versions is listed
here and nowhere else:

    0 -> 1  a file written before run keys gets args["run_key"], made from its flags (the
            settings they name, the mode's sizes); an examples file written before its example
            images' names were kept gets results["target_files"] ({dataset}_target_{class}.png).

Fields that a run records only when asked (path recordings, judges, the straight-line baseline
of Table 3, ...) are optional in every version: readers check for them, migration adds none.
"""
from __future__ import annotations

from dataclasses import fields

from .results import ResultsError
from .sampling import example_image_names
from .settings import LSTSettings

SCHEMA_VERSION = 1


def upgrade(payload: dict, kind: str, where: str = "") -> dict:
    """The payload ({"args", "results"}) of a results file of `kind` (examples, full_eval,
    all_confs) at SCHEMA_VERSION; a new dict (the arrays are shared). ResultsError for a file
    written by a newer version of this tool."""
    args, results = dict(payload["args"]), payload["results"]
    version = args.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ResultsError(f"{where or 'a results file'} has schema version {version}, newer "
                           f"than this tool's {SCHEMA_VERSION}: update the tool to read it")
    if version < 1:
        if "run_key" not in args:
            args["run_key"] = _key_from_flags(args, kind)
        if kind == "examples" and "target_files" not in results:
            results = dict(results, target_files=example_image_names(args["dataset"],
                                                                     results["classes"]))
    args["schema_version"] = SCHEMA_VERSION
    return {"args": args, "results": results}


def _key_from_flags(flags: dict, kind: str) -> dict:
    """A run key for a file written before run keys: its mode, model and dataset, the LST
    settings its flags give (`LSTSettings` fields; the adversarial step only with --adv_pert)
    and the flags of the mode's sizes."""
    settings = {f.name: flags[f.name] for f in fields(LSTSettings) if f.name in flags}
    if not flags.get("adv_pert"):
        settings["adv_step_size"] = None
    key = {"mode": kind, "model": flags.get("model"), "dataset": flags.get("dataset"),
           "settings": settings}
    if kind == "examples":
        key["classes"] = flags.get("target_classes")
    else:
        key.update({n: flags[n] for n in ("num_samples", "rounds", "get_final_imgs") if n in flags})
    return key
