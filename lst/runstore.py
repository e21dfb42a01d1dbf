"""The files of one run in its output folder (docs/design.md, "The run store").

    {out_dir}/{stem}_{kind}.pkl       final results files: kind examples_dict, fulleval_dict,
                                      all_confs (lst.results format)
    {out_dir}/{stem}_fulleval_parts/  while a full_eval runs:
        state.pkl                     the plan (sources and their targets) and the run key
        pairs_{first}_{last}.pkl      one per finished batch of pairs, with the run key

The run key holds everything that decides the results (model, weights fingerprint, settings,
sizes); a saved plan with another key is refused, never mixed. Under torch.distributed every
rank opens the store on a shared filesystem; only rank 0 discards or removes anything.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from .distributed import Rank, barrier
from .results import ResultsError, load_results, plain, save_results

log = logging.getLogger(__name__)


class ResumeError(ResultsError):
    """Saved partial state that does not belong to this run."""


class RunStore:
    """Owner of one run's files in `out_dir`, all named from `stem` (module docstring)."""

    def __init__(self, out_dir: str | Path, stem: str, rank: Rank = Rank()) -> None:
        self.out_dir = Path(out_dir)
        self.stem = stem
        self.rank = rank
        self.parts_dir = self.out_dir / f"{stem}_fulleval_parts"

    def path(self, kind: str) -> Path:
        """The final results file of `kind` (examples_dict, fulleval_dict, all_confs)."""
        return self.out_dir / f"{self.stem}_{kind}.pkl"

    def write(self, kind: str, args: dict, results: dict) -> Path:
        """Write the final results file of `kind` atomically; returns its path."""
        return save_results(self.path(kind), args, results)

    def read(self, kind: str) -> dict:
        """The results dict of the final results file of `kind` (ResultsError if unreadable)."""
        return load_results(self.path(kind))["results"]

    def open(self, restart: bool = False) -> None:
        """Start or resume a partial run; `restart` discards saved partial state first."""
        if restart and self.rank.is_main and self.parts_dir.exists():
            log.info("discarding the partial run in %s", self.parts_dir)
            shutil.rmtree(self.parts_dir)
        barrier()

    def load_plan(self, run_key: dict) -> dict | None:
        """The saved plan of this run, or None when there is none. ResumeError if the saved
        plan belongs to a run with another key (naming the arguments that differ)."""
        state_path = self.parts_dir / "state.pkl"
        if not state_path.is_file():
            return None
        state = load_results(state_path)
        self._check_key(state["args"], run_key, state_path)
        log.info("resuming from %s", self.parts_dir)
        return state["results"]

    def save_plan(self, run_key: dict, plan: dict) -> None:
        save_results(self.parts_dir / "state.pkl", run_key, plan)

    def save_part(self, run_key: dict, part: dict) -> Path:
        """Save one finished batch; part["pair_ids"] (n,) int names the pairs it holds."""
        ids = part["pair_ids"]
        name = f"pairs_{int(ids[0]):08d}_{int(ids[-1]):08d}.pkl"
        return save_results(self.parts_dir / name, run_key, part)

    def _part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("pairs_*.pkl"))

    def done_pair_ids(self) -> np.ndarray:
        """The ids of every pair a saved part holds, (n,) int64."""
        ids = [load_results(p)["results"]["pair_ids"] for p in self._part_files()]
        return np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, dtype=np.int64)

    def load_parts(self) -> list[dict]:
        """Every saved part's results dict, in file-name order."""
        return [load_results(p)["results"] for p in self._part_files()]

    def finish(self) -> None:
        """Remove the partial state once the final results files are written (rank 0)."""
        if self.rank.is_main and self.parts_dir.exists():
            shutil.rmtree(self.parts_dir)

    def _check_key(self, saved: dict, run_key: dict, where: Path) -> None:
        expected = plain(run_key)
        if saved != expected:
            changed = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
            raise ResumeError(f"{where.parent} holds a partial run with other arguments "
                              f"({', '.join(changed)}); rerun with the same arguments to resume, "
                              "or pass --restart to discard it")
