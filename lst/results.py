"""Results files (schema: docs/usage.md, "Results schema"): plain pickles, written atomically, read
back through a safe unpickler.

A results file is a dict {"args": {...}, "results": {...}} of plain Python containers (dict,
list, tuple, str, int, float, bool, None) and numpy arrays / scalars of plain dtypes. Nothing else
is written, and the reader refuses anything else: a pickle that would import or call other code
is rejected with ResultsError before any of it runs.
"""
from __future__ import annotations

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
        return value if type(value) is np.ndarray else value.view(np.ndarray)  # a memmap too
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


SEPARATE = "npy_file"  # results[key] = {SEPARATE: name}: the array lives in that .npy file


def array_file(path: str | Path, key: str) -> Path:
    """Where `save_results(path, ..., separate=[key])` puts results[key]: {stem}_{key}.npy."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{key}.npy")


def write_npy(f: BinaryIO, array: np.ndarray) -> None:
    """`array` in .npy format (np.load reads it) through f.write, so that a full disk is the
    usual OSError (np.save writes real files with tofile, which says only how much it wrote)."""
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
    f.write(memoryview(array.reshape(-1)).cast("B"))


def save_results(path: str | Path, args: dict, results: dict, separate: tuple[str, ...] = ()
                 ) -> Path:
    """Write {"args", "results"} to `path` atomically (see `atomic_write`). Each array named in
    `separate` (e.g. a full_eval's final_images) is written first, atomically, to its own .npy
    file beside it (`array_file`), and the pickle holds {"npy_file": its name} in its place, so
    that reading the pickle never reads those arrays (`load_results` maps them back lazily)."""
    results = dict(results)
    for key in separate:
        if results.get(key) is not None:
            npy = array_file(path, key)
            atomic_write(npy, lambda f, a=results[key]: write_npy(f, a))
            results[key] = {SEPARATE: npy.name}
    payload = {"args": plain(args), "results": plain(results)}
    return atomic_write(path, lambda f: pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL))


def _safe_load(f: BinaryIO, path: Path):
    try:
        return _SafeUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise ResultsError(f"{path} is not a safe results file: {err}") from None
    except Exception as err:  # truncated, foreign or corrupt
        raise ResultsError(f"{path} is not a readable results file ({type(err).__name__})") from None


def load_results(path: str | Path) -> dict:
    """Read a results file safely. Raises ResultsError naming the file on any problem. Arrays
    that live in their own .npy file (`save_results`' separate) come back memory-mapped,
    read-only: nothing of them is read until it is used."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            payload = _safe_load(f, path)
    except OSError as err:
        raise ResultsError(f"cannot read results file {path}: {err.strerror or err}") from None
    if not isinstance(payload, dict) or set(payload) != {"args", "results"}:
        raise ResultsError(f"{path} is not a results file of this tool")
    results = payload["results"]
    for key, value in list(results.items()) if isinstance(results, dict) else []:
        if isinstance(value, dict) and set(value) == {SEPARATE}:
            npy = path.parent / Path(value[SEPARATE]).name
            try:
                results[key] = np.load(npy, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ResultsError(f"cannot read {npy}, the {key} of {path}: "
                                   f"{getattr(err, 'strerror', None) or err}") from None
    return payload


def save_with_header(path: str | Path, header: dict, body: dict) -> Path:
    """Write two pickles into one file, atomically: a small `header` that `load_header` reads
    without the rest, then `body` (both plain, as results)."""
    header, body = plain(header), plain(body)

    def write(f: BinaryIO) -> None:
        pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(body, f, protocol=pickle.HIGHEST_PROTOCOL)

    return atomic_write(path, write)


def load_header(path: str | Path) -> dict:
    """The first pickle of a file (`save_with_header`'s header), read safely; the rest of the
    file is not read. ResultsError naming the file on any problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _safe_load(f, path)
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err.strerror or err}") from None


def load_with_header(path: str | Path) -> tuple[dict, dict | None]:
    """(header, body) of a `save_with_header` file, read safely; body None for a file of one
    pickle (a results file)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = _safe_load(f, path)
            if not f.peek(1):
                return header, None
            return header, _safe_load(f, path)
    except OSError as err:
        raise ResultsError(f"cannot read {path}: {err.strerror or err}") from None


def _fmt(x: float) -> str:
    return f"{x:g}"


def results_stem(*, desc: str, model: str, dataset: str, step_size: float, iters: int,
                 adv_step_size: float | None, classes: list[int] | None = None,
                 num_samples: int | None = None, run_id: str | None = None) -> str:
    """The paper's file stem: {desc}{model}_{dataset}_{classes or Nsamples}_stepsize-..._advstepsize-...

    classes are joined by '-'; advstepsize is 0 without the adversarial term. With `run_id`
    (`lst.identity.run_id`) the stem ends in _{run_id}: runs that differ in anything else that
    decides their results still get different names.
    """
    what = "-".join(str(c) for c in classes) if classes is not None else f"{num_samples}samples"
    adv = _fmt(adv_step_size) if adv_step_size is not None else "0"
    stem = (f"{desc}{model}_{dataset}_{what}_stepsize-{_fmt(step_size)}_{iters}iters_"
            f"advstepsize-{adv}")
    return stem if run_id is None else f"{stem}_{run_id}"
