"""A run's identity (docs/design.md, "The run store"): every argument that decides its
results (`run_key`), the short hash that ends its file names (`run_id`, `run_stem`), the
fingerprints of the weights and files it read, and where the results come from (`provenance`).

Every saved file carries the key; `lst.runstore.RunStore` refuses a file with another key and
says which arguments differ (`key_differences`).
"""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .results import plain, results_stem
from .traversal import LSTSettings

# known once the models are loaded (and, for examples, the saved example images used): checked
# against every saved file, never part of the run id
LOADED_KEYS = ("weights", "transfer_weights", "example_images")


def run_key(mode: str, model: str, dataset: str, settings: LSTSettings, *,
            data_root: str | Path | None = None, weights_file: str | Path | None = None,
            **sizes) -> dict:
    """Every argument that decides a run's results, as plain values.

    mode: "examples" or "full_eval"; data_root: the dataset's folder (resolved, so a relative
    path names the same data); weights_file: a local weights file known before the model is
    loaded (its content hash goes in, so retrained weights get another name); sizes: the mode's
    own arguments (classes; num_samples, rounds, get_final_imgs). The model's state-dict
    fingerprint is added once the model is loaded (`weights`).
    """
    key = {"mode": mode, "model": model, "dataset": dataset, "settings": settings.as_dict(),
           "data_root": None if data_root is None else str(Path(data_root).expanduser().resolve()),
           "weights_file": None if weights_file is None else file_digest(weights_file)}
    key.update(sizes)
    return plain(key)


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's state dict (names, shapes, dtypes, values): the
    run key's "weights", so a run never resumes or counts as done with other weights."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the model inside
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        raw = tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def run_id(key: dict) -> str:
    """'k' and 7 hex digits of the SHA-256 of the key (canonical JSON): the stem's last part."""
    text = json.dumps(plain(key), sort_keys=True, default=lambda v: np.asarray(v).tolist())
    return "k" + hashlib.sha256(text.encode()).hexdigest()[:7]


def run_stem(key: dict, desc: str = "") -> str:
    """The file stem of a run (`lst.results.results_stem`) from its key: model, dataset, step
    size, iterations, adversarial step, classes or sample count, and the run id."""
    settings = key["settings"]
    return results_stem(desc=desc, model=key["model"], dataset=key["dataset"],
                        step_size=settings["step_size"], iters=settings["iters"],
                        adv_step_size=settings["adv_step_size"],
                        classes=None if key.get("mode") == "full_eval" else key.get("classes"),
                        num_samples=key.get("num_samples"),
                        run_id=run_id({k: v for k, v in key.items() if k not in LOADED_KEYS}))


def results_args(key: dict, origin: dict, flags: dict | None = None) -> dict:
    """The `args` of a results file: the flags (command line; none from Python), the model and
    dataset names of the key, the full run key, the run id and where the results come from
    (`provenance`, with the time it finished)."""
    return {**(flags or {}), "model": key["model"], "dataset": key["dataset"], "run_key": key,
            "run_id": run_id({k: v for k, v in key.items() if k not in LOADED_KEYS}),
            "provenance": dict(origin, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))}


def provenance() -> dict:
    """Package versions, the project's git commit (when known), host and start time."""
    versions = {}
    for package in ("torch", "torchvision", "timm", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "git_commit": commit, "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def key_differences(saved: dict, expected: dict) -> list[str]:
    """The keys whose values differ, settings by field (e.g. 'settings.pthresh')."""
    changed = []
    for k in sorted(set(saved) | set(expected)):
        a, b = saved.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{k}.{sub}" for sub in key_differences(a, b)]
        elif a != b:
            changed.append(k)
    return changed
