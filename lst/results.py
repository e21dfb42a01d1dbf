"""Results files (schema: README, "Results schema"): plain pickles, written atomically, read
back through a safe unpickler.

A results file is a dict {"args": {...}, "results": {...}} of plain Python containers (dict,
list, tuple, str, int, float, bool, None) and numpy arrays / scalars of plain dtypes. Nothing else
is written, and the reader refuses anything else: a pickle that would import or call other code
is rejected with ResultsError before any of it runs.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np


class ResultsError(ValueError):
    """A results file that cannot be read or is not a safe results file (one-line message)."""


class WriteError(ResultsError):
    """A file could not be written (full disk, no permission); nothing half-written is left."""


# (module, name) pairs that a numpy array pickle needs, and nothing more
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "slice"), ("builtins", "complex"),
}
_PLAIN = (type(None), bool, int, float, str, np.bool_, np.integer, np.floating)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "numpy" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def plain(value: Any) -> Any:
    """`value` as plain containers and numpy arrays; torch tensors become numpy arrays.

    Raises TypeError for anything else (objects, callables), so results stay loadable safely.
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("object arrays are not allowed in results")
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor
        return value.detach().cpu().numpy()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _PLAIN):
        return value
    raise TypeError(f"{type(value).__name__} is not allowed in results")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(file) on a temporary file beside `path`, then rename it to `path`.

    A crash at any point leaves either the old file or the new one, never a half-written one.
    The file gets the usual permissions (0666 less the umask). An OSError (full disk, no
    permission) removes the temporary file and raises WriteError naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_results(path: str | Path, args: dict, results: dict) -> Path:
    """Write {"args", "results"} to `path` atomically (see `atomic_write`)."""
    payload = {"args": plain(args), "results": plain(results)}
    return atomic_write(path, lambda f: pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_results(path: str | Path) -> dict:
    """Read a results file safely. Raises ResultsError naming the file on any problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ResultsError(f"cannot read results file {path}: {err.strerror or err}") from None
    try:
        payload = _SafeUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as err:
        raise ResultsError(f"{path} is not a safe results file: {err}") from None
    except Exception as err:  # truncated, foreign or corrupt
        raise ResultsError(f"{path} is not a readable results file ({type(err).__name__})") from None
    if not isinstance(payload, dict) or set(payload) != {"args", "results"}:
        raise ResultsError(f"{path} is not a results file of this tool")
    return payload


def _fmt(x: float) -> str:
    return f"{x:g}"


def results_stem(*, desc: str, model: str, dataset: str, step_size: float, iters: int,
                 adv_step_size: float | None, classes: list[int] | None = None,
                 num_samples: int | None = None, run_id: str | None = None) -> str:
    """The paper's file stem: {desc}{model}_{dataset}_{classes or Nsamples}_stepsize-..._advstepsize-...

    classes are joined by '-'; advstepsize is 0 without the adversarial term. With `run_id`
    (`lst.runstore.run_id`) the stem ends in _{run_id}: runs that differ in anything else that
    decides their results still get different names.
    """
    what = "-".join(str(c) for c in classes) if classes is not None else f"{num_samples}samples"
    adv = _fmt(adv_step_size) if adv_step_size is not None else "0"
    stem = (f"{desc}{model}_{dataset}_{what}_stepsize-{_fmt(step_size)}_{iters}iters_"
            f"advstepsize-{adv}")
    return stem if run_id is None else f"{stem}_{run_id}"
