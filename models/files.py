"""A user's own model: a TorchScript file or a `package.module:callable` factory.

    MODEL = path/to/model.pt          torch.jit.load (a file written by torch.jit.save)
    MODEL = path/to/model.pt2         torch.export.load(...).module() (torch.export.save; export
                                      it in eval mode with a dynamic batch dimension)
    MODEL = package.module:callable   imported from the current folder or PYTHONPATH, called
                                      with no arguments; it returns an nn.Module, into which
                                      --load_model_path loads a state dict (weights_only=True)

Such a model says neither its input size nor its normalisation: `input_shape` finds its channels
(RGB or grayscale) by running it on the given size, and `--mean/--std` wrap it in
`models.architectures.Normalized` so that it takes [0,1] images like every model of the tool.
Its name in file names and tables is the file's stem or the callable's name; its identity in a
run key is the content hash of the TorchScript file or of the factory's source file
(`model_file_digest`), beside the weights file's hash and the loaded state dict's fingerprint.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

import torch
from torch import nn

from lst.identity import file_digest

MODEL_FILE_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".jit", ".torchscript")
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")  # where trainers nest weights


class ModelError(ValueError):
    """A model that cannot be had or built; the message is one line meant for the user."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def model_kind(spec: str) -> str:
    """'file' (an existing file), 'callable' (package.module:callable) or 'name' (a registry
    name). ModelError for what looks like a model file but does not exist."""
    if Path(spec).expanduser().is_file():
        return "file"
    if ":" in spec:
        return "callable"
    if "/" in spec or os.sep in spec or spec.endswith(MODEL_FILE_SUFFIXES):
        raise ModelError(f"model file {spec} does not exist")
    return "name"


def model_name(spec: str) -> str:
    """The model's name in file names and tables: a file's stem, a callable's name, or the
    registry name itself."""
    kind = model_kind(spec)
    if kind == "file":
        return Path(spec).stem
    if kind == "callable":
        return spec.rpartition(":")[2].rpartition(".")[2]
    return spec


def import_factory(spec: str):
    """The callable named by 'package.module:callable' (dotted attributes allowed after the
    colon), imported from the current folder or PYTHONPATH. ModelError if it cannot be had."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"MODEL {spec!r} is not package.module:callable")
    if os.getcwd() not in sys.path:  # `python level_set_traversal.py` puts only its own folder first
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or any error of the module's own code
        raise ModelError(f"cannot import {module_name} for MODEL {spec} ({_first_line(err)}); "
                         "it is imported from the current folder or PYTHONPATH") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module_name} has no {attribute} (MODEL {spec})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"MODEL {spec}: {attribute} is a {type(obj).__name__}, not a callable")
    return obj


def model_file_digest(spec: str) -> str | None:
    """The content hash (`lst.identity.file_digest`) of what defines a user's model: the
    TorchScript file, or the source file of the factory's module (None where it has none);
    None for registry names."""
    kind = model_kind(spec)
    if kind == "file":
        return file_digest(Path(spec).expanduser())
    if kind == "callable":
        try:
            source = inspect.getsourcefile(inspect.getmodule(import_factory(spec)))
        except TypeError:  # a built-in
            return None
        return file_digest(source) if source else None
    return None


def load_torchscript(path: str | Path) -> nn.Module:
    """The TorchScript module saved in `path` (torch.jit.save), on the CPU."""
    try:
        return torch.jit.load(str(Path(path).expanduser()), map_location="cpu")
    except Exception as err:
        raise ModelError(f"{path} is not a TorchScript file ({_first_line(err)}): export the model "
                         "with torch.jit.script or torch.jit.trace and torch.jit.save, or pass "
                         "package.module:callable and --load_model_path WEIGHTS") from None


def load_exported(path: str | Path) -> nn.Module:
    """The module of a torch.export program saved in `path` (torch.export.save)."""
    try:
        return torch.export.load(str(Path(path).expanduser())).module()
    except Exception as err:
        raise ModelError(f"{path} is not a torch.export file ({_first_line(err)}): save the "
                         "program of torch.export.export with torch.export.save") from None


def build_from_factory(spec: str) -> nn.Module:
    """Call the factory `spec` with no arguments; ModelError unless it returns an nn.Module."""
    factory = import_factory(spec)
    try:
        model = factory()
    except Exception as err:
        raise ModelError(f"{spec}() failed ({_first_line(err)})") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, read with weights_only=True: a plain state dict, or one
    nested under a trainer's key (CHECKPOINT_KEYS); a 'module.' prefix (DataParallel) is dropped."""
    try:
        blob = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"--load_model_path {path} cannot be read as weights with "
                         f"weights_only=True ({_first_line(err)})") from None

    def is_state(value) -> bool:
        return isinstance(value, dict) and bool(value) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())

    if not is_state(blob):
        nested = [blob[k] for k in CHECKPOINT_KEYS if isinstance(blob, dict) and is_state(blob.get(k))]
        if not nested:
            raise ModelError(f"--load_model_path {path} holds no state dict (a dict of tensors, "
                             f"or one under {', '.join(repr(k) for k in CHECKPOINT_KEYS)})")
        blob = nested[0]
    if all(k.startswith("module.") for k in blob):
        blob = {k.removeprefix("module."): v for k, v in blob.items()}
    return blob


def first_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """The first key where a state dict does not fit a model's, as a phrase; None if it fits."""
    for key, tensor in expected.items():
        if key not in given:
            return f"missing key {key!r}"
        if tuple(given[key].shape) != tuple(tensor.shape):
            return (f"size mismatch for {key!r}: the file has {tuple(given[key].shape)}, the "
                    f"model {tuple(tensor.shape)}")
    unexpected = [key for key in given if key not in expected]
    return f"unexpected key {unexpected[0]!r}" if unexpected else None


def load_weights(model: nn.Module, path: str | Path, spec: str) -> nn.Module:
    """Load the state dict of `path` into `model` (strict); ModelError naming the first key that
    does not fit."""
    state = read_state_dict(path)
    mismatch = first_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise ModelError(f"the weights {path} do not fit {spec}: {mismatch}")
    model.load_state_dict(state)
    return model


def user_model(spec: str, checkpoint: str | None = None) -> nn.Module:
    """The model of a TorchScript file or a factory (module docstring), on the CPU, as built."""
    if model_kind(spec) == "file":
        if checkpoint is not None:
            raise ModelError("--load_model_path goes with a registry name or "
                             "package.module:callable; a model file holds its weights")
        return load_exported(spec) if spec.endswith(".pt2") else load_torchscript(spec)
    model = build_from_factory(spec)
    return model if checkpoint is None else load_weights(model, checkpoint, spec)


def _tries(model: nn.Module, shape: tuple[int, ...]) -> tuple[int | None, str]:
    """(number of outputs, '') if the model maps a gray batch of `shape` to (N, K) logits, else
    (None, why not)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = model(torch.full(shape, 0.5, device=device))
    except Exception as err:
        return None, _first_line(err)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != shape[0]:
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return None, f"its output is {what}, not (batch, classes) logits"
    return out.shape[1], ""


def input_shape(model: nn.Module, image_size: tuple[int, int]) -> tuple[tuple[int, int, int], int]:
    """((C,H,W), number of outputs) of a model on images of `image_size` (H, W): C is 3 or 1,
    whichever it runs on (its first 4-d weight's input channels tried first). ModelError naming
    the size when it runs on neither."""
    first = next((p.shape[1] for p in model.parameters() if p.dim() == 4), 3)
    why = ""
    for channels in dict.fromkeys((first, 3, 1)):
        if channels not in (1, 3):
            continue
        outputs, reason = _tries(model, (2, channels, *image_size))
        if outputs is not None:
            return (channels, *image_size), outputs
        why = why or reason
    raise ModelError(f"the model fails on a (2, {first if first in (1, 3) else 3}, {image_size[0]}, "
                     f"{image_size[1]}) batch ({why}): give the size it takes with --image_size H W")


def num_outputs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """The number of classes the model scores, from one forward pass on a (2, C, H, W) batch;
    ModelError naming the size when the model fails on it."""
    outputs, why = _tries(model, (2, *input_size))
    if outputs is None:
        raise ModelError(f"the model fails on a {(2, *input_size)} batch ({why})")
    return outputs
