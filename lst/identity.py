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
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .results import plain, results_stem
from .sampling import MIN_CONFIDENCE
from .schema import SCHEMA_VERSION
from .settings import LSTSettings

# known once the models are loaded (and, for examples, the saved example images used): checked
# against every saved file, never part of the run id
LOADED_KEYS = ("weights", "transfer_weights", "example_images")


def run_key(mode: str, model: str, dataset: str, settings: LSTSettings, *,
            classes: Sequence[int] | None = None, num_samples: int | None = None,
            rounds: int | None = None, get_final_imgs: bool = False, protocol: str = "ours",
            restarts: int = 1, judges: Sequence[str] = (),
            judge_weights_files: Sequence[str | None] | None = None,
            judge_model_files: Sequence[str | None] | None = None,
            data_root: str | Path | None = None, weights_file: str | Path | None = None,
            model_file: str | None = None, preprocessing: dict | None = None,
            lpips: bool = False, min_confidence: float = MIN_CONFIDENCE) -> dict:
    """Every argument that decides a run's results, as plain values: the one builder of run
    keys, for the command line and the library alike.

    mode: "examples" (classes: its K classes) or "full_eval" (num_samples, rounds,
    get_final_imgs; protocols paper and pairs add the pool's classes); restarts: walks per
    pair; judges: the names of the transfer models (judge_weights_files / judge_model_files: the content
    hashes of their local weights and model files, where the command line knows them);
    data_root: the dataset's folder (resolved, so a relative path names the same data);
    weights_file: a local weights file known before the model is loaded, model_file: the
    content hash of a user's model file (so retrained weights or an edited model make another
    run); preprocessing: --mean/--std/--image_size as given; lpips: LPIPS is computed (its
    weights are there), not NaN; min_confidence: the confidence above which new sources and
    example images are taken.

    Arguments at their defaults (restarts 1, protocol ours, no judges, ...) are left out, so the
    run ids of runs made before they existed stay as they were. What is known only once the
    models are loaded is added by `loaded_key`.
    """
    key = {"mode": mode, "model": model, "dataset": dataset, "settings": settings.as_dict(),
           "data_root": None if data_root is None else str(Path(data_root).expanduser().resolve()),
           "weights_file": None if weights_file is None else file_digest(weights_file)}
    if mode == "examples":
        key["classes"] = list(classes)
    else:
        key.update(num_samples=num_samples, rounds=rounds, get_final_imgs=bool(get_final_imgs))
    if protocol != "ours":
        key.update(protocol=protocol, classes=list(classes), num_samples=len(classes))
    optional = {"restarts": restarts if restarts > 1 else None, "model_file": model_file,
                "preprocessing": preprocessing or None, "lpips": True if lpips else None,
                "transfer_models": list(judges) or None,
                "min_confidence": (float(min_confidence) if min_confidence != MIN_CONFIDENCE
                                   else None),
                "transfer_weights_files": judge_weights_files if judges else None,
                "transfer_model_files": judge_model_files if judges else None}
    key.update({name: value for name, value in optional.items() if value is not None})
    return plain(key)


def loaded_key(key: dict, model: nn.Module, transfer_models: Mapping[str, nn.Module] | None = None,
               example_images: Sequence[str | None] | None = None) -> dict:
    """The run key completed with what is known once the models are loaded (`LOADED_KEYS`): the
    weights fingerprints of the model and of the transfer models (computed only where the key
    has none yet) and, when given, the content hashes of the example images used. A new dict;
    the run id does not change."""
    key = dict(key)
    if "weights" not in key:
        key["weights"] = weights_fingerprint(model)
    if transfer_models and "transfer_weights" not in key:
        key["transfer_weights"] = [weights_fingerprint(m) for m in transfer_models.values()]
    if example_images is not None:
        key["example_images"] = list(example_images)
    return key


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
    dataset names of the key, the full run key, the file's `lst.schema.SCHEMA_VERSION`, the run
    id and where the results come from (`provenance`, with the time it finished)."""
    return {**(flags or {}), "model": key["model"], "dataset": key["dataset"], "run_key": key,
            "schema_version": SCHEMA_VERSION,
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
