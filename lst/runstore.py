"""The files of one run in its output folder (docs/design.md, "The run store"); the run's
identity (run key, run id, fingerprints) is `lst.identity`.

    {out_dir}/{stem}_{kind}.pkl     final results files: kind examples_dict, fulleval_dict,
                                    all_confs (lst.results format)
    {out_dir}/{stem}_{mode}_parts/  while the run goes on (mode examples or fulleval):
        lock                        fcntl lock held by the run (its PID, host and start)
        state.pkl                   full_eval: the plan (sources and their targets)
        pairs_{first}_{last}.pkl    full_eval: one per finished batch of pairs, a small header
                                    (run key, pair ids) before its arrays
    {out_dir}/{stem}_fulleval_dict_final_images.npy   a full_eval's blind spots (8-bit)

Every results-relevant argument is in the run key (`run_key`); the stem ends in a short hash of
it (`run_id`), so two different runs never share a file name and the same run always gets the
same one. Every saved file carries the key, and a file with another key is refused, never mixed.
Under torch.distributed every rank opens the store on a shared filesystem; only rank 0 locks,
discards, merges or removes anything.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .distributed import Rank, barrier, broadcast
from .identity import key_differences, run_stem
from .schema import upgrade
from .results import (ResultsError, load_header, load_results, load_with_header, plain,
                      save_results, save_with_header)

log = logging.getLogger(__name__)


class ResumeError(ResultsError):
    """Saved state that does not belong to this run."""


class RunLockedError(ResultsError):
    """Another live run holds this run's lock."""


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
        """Write the final results file of `kind` atomically; returns its path. A full_eval's
        images (final_images, matched_images, restart_final_images, source_images) go to their own files,
        {stem}_fulleval_dict_{key}.npy, written first (`lst.results.save_results`), so that
        reading the results pickle never reads them."""
        separate = (("final_images", "matched_images", "restart_final_images", "source_images")
                    if kind == "fulleval_dict" else ())
        return save_results(self.path(kind), args, results, separate=separate)

    def read(self, kind: str) -> dict:
        """The results dict of the final results file of `kind`, at the current schema
        (`lst.schema.upgrade`; ResultsError if unreadable)."""
        path = self.path(kind)
        mode = {"examples_dict": "examples", "fulleval_dict": "full_eval"}.get(kind, kind)
        return upgrade(load_results(path), mode, str(path))["results"]

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
            except OSError as err:  # every rank must stop with this line, not wait for rank 0
                where = f" ({err.filename})" if err.filename else ""
                error = ResultsError(f"cannot open the run's files in {self.out_dir}: "
                                     f"{err.strerror or err}{where}")
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
                if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise ResultsError(f"cannot lock {lock_path}: the filesystem of --out_dir "
                                       f"{self.out_dir} does not support file locks "
                                       f"({err.strerror}); give an --out_dir on a filesystem "
                                       "that does (a local disk, or NFS with locking)") from None
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
                   ", ".join(key_differences(saved, plain(key))))
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
        """Save one finished batch; part["pair_ids"] (n,) int names the pairs it holds. The file
        starts with a small header (the run key and the pair ids), so which pairs are done is
        read without the batch's arrays."""
        ids = part["pair_ids"]
        name = f"pairs_{int(ids[0]):08d}_{int(ids[-1]):08d}.pkl"
        return save_with_header(self.parts_dir / name, {"run_key": key, "pair_ids": ids}, part)

    def _part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("pairs_*.pkl"))

    @staticmethod
    def _read_part(path: Path, with_body: bool = False) -> tuple[dict, dict | None]:
        """(header {"run_key", "pair_ids"}, body) of a saved part; the body (its results dict)
        only `with_body`, else None and the file is read no further than its header. A part
        saved before headers (one pickle {"args", "results"}) is read whole."""
        header, body = load_with_header(path) if with_body else (load_header(path), None)
        if set(header) == {"args", "results"}:  # written before part headers
            header, body = ({"run_key": header["args"],
                             "pair_ids": header["results"]["pair_ids"]}, header["results"])
        return header, body

    def saved_pairs(self) -> int:
        """How many pairs the saved parts hold (whichever run saved them)."""
        try:
            return sum(len(self._read_part(p)[0]["pair_ids"]) for p in self._part_files())
        except (ResultsError, OSError):
            return 0

    def done_pair_ids(self, key: dict) -> np.ndarray:
        """The ids of every pair a saved part of this run holds, (n,) int64, read from the parts'
        headers; ResumeError for a part saved with another key."""
        ids = []
        for path in self._part_files():
            header, _ = self._read_part(path)
            self._check_key(header["run_key"], key, path)
            ids.append(np.asarray(header["pair_ids"]))
        return np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, dtype=np.int64)

    def iter_parts(self, key: dict) -> Iterator[dict]:
        """Every saved part's results dict, one at a time, in file-name order; ResumeError for a
        part saved with another key."""
        for path in self._part_files():
            header, body = self._read_part(path, with_body=True)
            self._check_key(header["run_key"], key, path)
            yield body

    def load_parts(self, key: dict) -> list[dict]:
        """Every saved part's results dict, in file-name order (`iter_parts`, all at once)."""
        return list(self.iter_parts(key))

    def _check_key(self, saved: dict, key: dict, where: Path) -> None:
        expected = plain(key)
        if saved != expected:
            raise ResumeError(f"{where} belongs to a run with other arguments "
                              f"({', '.join(key_differences(saved, expected))}); rerun with the same "
                              "arguments to resume, or pass --restart to discard it")
