"""Inside the network: at which layer does a blind spot stop looking like its target and start
looking like its source? (docs/design.md, "Layer scores")

A layer's representation h(x) is the output of a named module (a forward hook), flattened. Its
score for an image x of the pair (x_s, x_t) compares h(x) with h(x_s) and h(x_t) by cosine
distance, d(a, b) = 1 - cos(a, b):

    score = d(h(x), h(x_t)) / (d(h(x), h(x_s)) + d(h(x), h(x_t)))

in [0, 1]: 1 at the source and 0 at the target by construction, 0.5 where the two are equally
far (and where h(x_s) = h(x_t)). Cosine distance ignores the representation's scale, which
changes from layer to layer and between models. The name "input" stands for the image itself
(its pixels, a layer at depth 0): where the walk has got to before the network sees it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .batching import chunks, image_chunk
from .confidence import model_device

INPUT = "input"  # the image itself, as a layer


def default_layers(model: nn.Module) -> list[str]:
    """A sensible set of layers from input to head, by architecture, after "input" (the
    pixels): a module's own
    `lst_layers` (names relative to it; the project's CNNs declare their stages and penultimate
    layer), else a transformer's patch embedding, blocks (`blocks.0`, ...) and final norm, else
    a ResNet's stages (`layer1`..`layer4`, or `block1`..`block3` of a WideResNet) and its
    pooling. Names are full
    `named_modules` names (a wrapper's prefix included; of a `torch.compile`d model, the names
    of the module it compiled). ValueError if none of these applies."""
    return [INPUT] + _architecture_layers(uncompiled(model))


def uncompiled(model: nn.Module) -> nn.Module:
    """The module inside a `torch.compile` wrapper (the model itself otherwise): layer names are
    its names, and representations run it eagerly, so forward hooks see every module."""
    return getattr(model, "_orig_mod", model)


def _architecture_layers(model: nn.Module) -> list[str]:
    modules = dict(model.named_modules())
    for prefix, module in modules.items():
        declared = getattr(module, "lst_layers", None)
        if declared:
            return [_join(prefix, name) for name in declared]
    for prefix, module in modules.items():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 1:
            names = [_join(prefix, f"blocks.{i}") for i in range(len(blocks))]
            if isinstance(getattr(module, "patch_embed", None), nn.Module):
                names.insert(0, _join(prefix, "patch_embed"))
            last = [n for n in ("fc_norm", "norm") if isinstance(getattr(module, n, None), nn.Module)
                    and not isinstance(getattr(module, n), nn.Identity)]
            return names + [_join(prefix, last[0])] if last else names
    for stages, pool in ((("layer1", "layer2", "layer3", "layer4"), ("global_pool", "avgpool")),
                         (("block1", "block2", "block3"), ("relu",))):
        for prefix, module in modules.items():
            if all(isinstance(getattr(module, s, None), nn.Module) for s in stages[:3]):
                names = [_join(prefix, s) for s in stages if hasattr(module, s)]
                names += [_join(prefix, p) for p in pool if hasattr(module, p)][:1]
                return names
    raise ValueError("no default layers for this model: name them (--layers NAME ...; "
                     f"its modules include {', '.join(_some_names(model))})")


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The layers to record: `names`, or `default_layers(model)` when empty. ValueError naming
    the first name that is neither a module of the model nor "input", and some names that are."""
    if not names:
        return default_layers(model)
    model = uncompiled(model)
    modules = dict(model.named_modules())
    missing = [n for n in names if n != INPUT and (n not in modules or n == "")]
    if missing:
        raise ValueError(f"layer {missing[0]!r} is not a module of the model (its modules "
                         f"include {', '.join(_some_names(model))})")
    return list(names)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _some_names(model: nn.Module, count: int = 8) -> list[str]:
    names = [n for n, _ in model.named_modules() if n and "." not in n]
    return names[:count] + (["..."] if len(names) > count else [])


@torch.inference_mode()
def representations(model: nn.Module, images: torch.Tensor, layers: Sequence[str],
                    chunk_size: int = 64) -> list[torch.Tensor]:
    """The outputs of the named modules for (N,C,H,W) images in [0,1], in float32, one
    (N, D_layer) tensor per layer on the model's device (flattened; a tuple output's first
    element; "input": the images' pixels). Evaluated `chunk_size` images at a time (fewer for
    large images); a `torch.compile`d model's inner module runs, eagerly (`uncompiled`)."""
    model = uncompiled(model)
    device = model_device(model)
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def keep(_module, _inputs, output):
            output = output[0] if isinstance(output, (tuple, list)) else output
            captured[name] = output.detach().float().flatten(1)
        return keep

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers
               if name != INPUT]
    parts: list[list[torch.Tensor]] = [[] for _ in layers]
    try:
        for part in chunks(len(images), image_chunk(chunk_size, images[0].numel())):
            captured.clear()
            x = images[part].to(device, torch.float32)
            captured[INPUT] = x.flatten(1)
            model(x)
            for k, name in enumerate(layers):
                parts[k].append(captured[name])
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(p) if p else torch.empty(0, device=device) for p in parts]


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) per row of (N,D) tensors -> (N,) float64, in [0, 2]; 1 where a row is
    zero. In float64 (float32 on MPS, which has none): near cos = 1 float32 loses most digits
    of the difference."""
    dtype = torch.float32 if a.device.type == "mps" else torch.float64
    cos = torch.nn.functional.cosine_similarity(a.to(dtype), b.to(dtype), dim=1, eps=1e-12)
    return 1 - cos


def scores_from(reps: Sequence[torch.Tensor], source_reps: Sequence[torch.Tensor],
                target_reps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Layer scores from representations (lists over layers of (N,D_l)): (N,L) float32,
    d_t / (d_s + d_t) with cosine distances, 0.5 where both are 0."""
    out = []
    for h, h_s, h_t in zip(reps, source_reps, target_reps):
        d_s, d_t = cosine_distance(h, h_s), cosine_distance(h, h_t)
        total = d_s + d_t
        out.append(torch.where(total > 0, d_t / total.clamp_min(1e-30), torch.full_like(total, 0.5)))
    return torch.stack(out, dim=1).float()


def layer_scores(model: nn.Module, images: torch.Tensor, sources: torch.Tensor,
                 targets: torch.Tensor, layers: Sequence[str], chunk_size: int = 64
                 ) -> torch.Tensor:
    """The score of each image at each layer against its own (source, target): all (N,C,H,W)
    in [0,1]. Returns (N,L) float32 on the CPU (see the module's docstring)."""
    reps = [representations(model, x, layers, chunk_size) for x in (images, sources, targets)]
    return scores_from(*reps).cpu()
