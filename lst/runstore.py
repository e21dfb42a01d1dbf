"""The files of one run in its output folder, and the run's identity (docs/design.md, "The run
store").

    {out_dir}/{stem}_{kind}.pkl     final results files: kind examples_dict, fulleval_dict,
                                    all_confs (lst.results format)
    {out_dir}/{stem}_{mode}_parts/  while the run goes on (mode examples or fulleval):
        lock                        fcntl lock held by the run (its PID, host and start)
        state.pkl                   full_eval: the plan (sources and their targets)
        pairs_{first}_{last}.pkl    full_eval: one per finished batch of pairs

Every results-relevant argument is in the run key (`run_key`); the stem ends in a short hash of
it (`run_id`), so two different runs never share a file name and the same run always gets the
same one. Every saved file carries the key, and a file with another key is refused, never mixed.
Under torch.distributed every rank opens the store on a shared filesystem; only rank 0 locks,
discards, merges or removes anything.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .distributed import Rank, barrier, broadcast
from .results import ResultsError, load_results, plain, results_stem, save_results
from .traversal import LSTSettings

log = logging.getLogger(__name__)


class ResumeError(ResultsError):
    """Saved state that does not belong to this run."""


class RunLockedError(ResultsError):
    """Another live run holds this run's lock."""


LOADED_KEYS = ("weights", "transfer_weights")  # known once the models are loaded; not in the run id


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
                        adv_step_size=settings["adv_step_size"], classes=key.get("classes"),
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


class RunStore:
    """Owner of one run's files in `out_dir`, all named from `stem` (module docstring).

    mode: "examples" or "full_eval"; key: the run key (`run_key`) when the store is made for one
    (`RunStore.for_run`), which `lst.run_examples` and `lst.run_full_eval` then use and complete
    with the model's weights. Use `open` as a context manager around the run: it checks that the
    folder is writable, takes the lock and, on leaving, releases it and removes a parts folder
    that holds nothing worth resuming.
    """

    def __init__(self, out_dir: str | Path, stem: str, mode: str = "full_eval",
                 rank: Rank = Rank(), key: dict | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.stem = stem
        self.rank = rank
        self.key = key
        self.parts_dir = self.out_dir / f"{stem}_{mode.replace('_', '')}_parts"
        self._lock_fd: int | None = None
        self._made_out_dir = False

    @classmethod
    def for_run(cls, out_dir: str | Path, key: dict, *, desc: str = "",
                rank: Rank = Rank()) -> "RunStore":
        """The store of the run with this key (`run_key`), named as the command line names it
        (`run_stem`), e.g. RunStore.for_run("out", run_key("examples", "mynet", "pets",
        settings, classes=[0, 1, 2]))."""
        mode = "examples" if key["mode"] == "examples" else "full_eval"
        return cls(out_dir, run_stem(key, desc), mode, rank, key=key)

    def path(self, kind: str) -> Path:
        """The final results file of `kind` (examples_dict, fulleval_dict, all_confs)."""
        return self.out_dir / f"{self.stem}_{kind}.pkl"

    def write(self, kind: str, args: dict, results: dict) -> Path:
        """Write the final results file of `kind` atomically; returns its path."""
        return save_results(self.path(kind), args, results)

    def read(self, kind: str) -> dict:
        """The results dict of the final results file of `kind` (ResultsError if unreadable)."""
        return load_results(self.path(kind))["results"]

    # -- the run's lifetime ---------------------------------------------------------------

    def check_writable(self) -> None:
        """Create out_dir if needed and make sure a file can be written there (ResultsError)."""
        try:
            self._made_out_dir = not self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ResultsError(f"cannot create the output folder {self.out_dir}: "
                               f"{err.strerror or err}") from None
        probe = self.out_dir / f".{self.stem}.probe.{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ResultsError(f"the output folder {self.out_dir} is not writable: "
                               f"{err.strerror or err}") from None

    def open(self, restart: bool = False) -> "RunStore":
        """Check the folder, take the run's lock (RunLockedError if a live run holds it) and,
        with `restart`, discard saved partial state. Rank 0 does it; every rank raises its
        error. Returns self, to be used as `with store.open(): ...`."""
        error = None
        if self.rank.is_main:
            try:
                self.check_writable()
                self._lock()
                if restart:
                    self._discard_partial()
            except ValueError as err:
                error = err
        error = broadcast(error)
        if error is not None:
            raise error
        barrier()
        return self

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock; remove the parts folder if nothing in it is worth resuming, and
        the output folder if this run made it and left nothing in it."""
        if self._lock_fd is None:
            return
        if not self.parts_dir.is_dir():
            pass  # finished: the folder is gone
        elif not any(p.name != "lock" for p in self.parts_dir.iterdir()):
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        else:
            os.ftruncate(self._lock_fd, 0)  # no holder: the next run resumes without a word
        os.close(self._lock_fd)
        self._lock_fd = None
        if self._made_out_dir and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()

    def finish(self) -> None:
        """Remove the partial state once the final results files are written (rank 0)."""
        if self.rank.is_main and self.parts_dir.exists():
            shutil.rmtree(self.parts_dir)

    def _lock(self) -> None:
        lock_path = self.parts_dir / "lock"
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ResultsError(f"cannot create {self.parts_dir}: {err.strerror or err}") from None
        while True:  # the file may be removed by a run that finishes meanwhile: lock the live one
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(f"{self.parts_dir} is in use by {holder}: wait for it to "
                                         "finish, or give another --out_dir") from None
                raise ResultsError(f"cannot lock {lock_path}: {err.strerror}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if previous:
            log.warning("taking over %s from %s, which is no longer running", self.parts_dir,
                        previous)
        holder = (f"PID {os.getpid()} on host {socket.gethostname()} "
                  f"(since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._lock_fd = fd

    def _discard_partial(self) -> None:
        for path in self.parts_dir.iterdir():
            if path.name != "lock":
                log.info("discarding %s", path)
                path.unlink()

    # -- final files ----------------------------------------------------------------------

    def finished(self, kind: str, key: dict) -> bool:
        """Whether the final results file of `kind` holds this very run (same key). A file of
        another run under this name (other weights, or written before run keys) raises
        ResultsError: it is never overwritten silently."""
        path = self.path(kind)
        if not path.is_file():
            return False
        saved = load_results(path)["args"].get("run_key")
        if saved == plain(key):
            return True
        changed = ("no run key: written by an earlier version" if saved is None else
                   ", ".join(_differences(saved, plain(key))))
        raise ResultsError(f"{path} holds another run ({changed}); pass --overwrite to replace "
                           "it, or give another --out_dir or --desc")

    # -- a full_eval's partial state -------------------------------------------------------

    def load_plan(self, key: dict) -> dict | None:
        """The saved plan of this run, or None when there is none. ResumeError if the saved
        plan belongs to a run with another key (naming the arguments that differ)."""
        state_path = self.parts_dir / "state.pkl"
        if not state_path.is_file():
            return None
        state = load_results(state_path)
        self._check_key(state["args"], key, state_path)
        log.info("resuming from %s", self.parts_dir)
        return state["results"]

    def save_plan(self, key: dict, plan: dict) -> None:
        save_results(self.parts_dir / "state.pkl", key, plan)

    def save_part(self, key: dict, part: dict) -> Path:
        """Save one finished batch; part["pair_ids"] (n,) int names the pairs it holds."""
        ids = part["pair_ids"]
        name = f"pairs_{int(ids[0]):08d}_{int(ids[-1]):08d}.pkl"
        return save_results(self.parts_dir / name, key, part)

    def _part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("pairs_*.pkl"))

    def saved_pairs(self) -> int:
        """How many pairs the saved parts hold (whichever run saved them)."""
        try:
            return sum(len(load_results(p)["results"]["pair_ids"]) for p in self._part_files())
        except (ResultsError, OSError):
            return 0

    def done_pair_ids(self, key: dict) -> np.ndarray:
        """The ids of every pair a saved part of this run holds, (n,) int64."""
        parts = self.load_parts(key)
        ids = [p["pair_ids"] for p in parts]
        return np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, dtype=np.int64)

    def load_parts(self, key: dict) -> list[dict]:
        """Every saved part's results dict, in file-name order; ResumeError for a part saved
        with another key."""
        parts = []
        for path in self._part_files():
            payload = load_results(path)
            self._check_key(payload["args"], key, path)
            parts.append(payload["results"])
        return parts

    def _check_key(self, saved: dict, key: dict, where: Path) -> None:
        expected = plain(key)
        if saved != expected:
            raise ResumeError(f"{where} belongs to a run with other arguments "
                              f"({', '.join(_differences(saved, expected))}); rerun with the same "
                              "arguments to resume, or pass --restart to discard it")


def _differences(saved: dict, expected: dict) -> list[str]:
    """The keys whose values differ, settings by field (e.g. 'settings.pthresh')."""
    changed = []
    for k in sorted(set(saved) | set(expected)):
        a, b = saved.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{k}.{sub}" for sub in _differences(a, b)]
        elif a != b:
            changed.append(k)
    return changed
