"""Path width (docs/design.md, "Measurements"): how far the level set extends sideways around
an LST iterate."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .batching import sample_generator
from .confidence import class_confidence, confidences_of, in_eval_mode
from .precision import autocast, model_input


def random_orthogonal_directions(step: torch.Tensor, num_directions: int,
                                 generator: torch.Generator) -> torch.Tensor:
    """Unit-norm Gaussian directions with their component along `step` removed.

    step: (C,H,W) step direction (d_perp); returns (num_directions,C,H,W) float32 on step's device.
    A zero `step` leaves the Gaussian directions unprojected.
    """
    dirs = torch.randn((num_directions, *step.shape), generator=generator, device=step.device,
                       dtype=torch.float32)
    flat = dirs.view(num_directions, -1)
    s = step.reshape(-1).float()
    s_norm = s.norm()
    if s_norm > 0:
        s = s / s_norm
        flat -= (flat @ s).unsqueeze(1) * s
    flat /= flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return dirs


@in_eval_mode
@torch.inference_mode()
def path_widths(model: nn.Module, points: torch.Tensor, steps: torch.Tensor, labels: torch.Tensor,
                distances: Sequence[float], *, num_directions: int = 256, seed: int = 0,
                sample_ids: Sequence[int] | None = None, stream: str = "widths",
                chunk_size: int = 256, precision: str = "fp32") -> torch.Tensor:
    """Percentiles of source-class confidence at distance r around each point, sideways to its step.

    points: (N,C,H,W) iterates in [0,1]; steps: (N,C,H,W) their step directions d_perp;
    labels: (N,) source classes; all on the model's device. For each point, `num_directions`
    Gaussian directions are drawn from (seed, sample id, stream), made orthogonal to the step and
    unit-norm, and p_y is evaluated at clip(x + r u, 0, 1) for every r in `distances`. The
    N * len(distances) * num_directions images are evaluated `chunk_size` at a time across
    samples (a chunk may hold the end of one sample and the start of the next), in the model
    arithmetic `precision`; only the directions of the samples in the current chunk are kept.

    Returns (N, len(distances)+1, 2) float32 on CPU: row 0 holds the confidence at the point
    itself (in both columns), row k+1 the 5th and 95th percentiles over directions at distances[k].
    """
    n, device = len(points), points.device
    ids = range(n) if sample_ids is None else sample_ids
    radii = torch.as_tensor(list(distances), dtype=torch.float32, device=device)
    per_sample = len(radii) * num_directions
    out = torch.empty(n, len(radii) + 1, 2)
    with autocast(precision, device):
        at_points = class_confidence(model(model_input(model, points, precision)), labels)
    out[:, 0, :] = at_points.cpu().unsqueeze(1)
    directions: dict[int, torch.Tensor] = {}  # sample -> its (num_directions,C,H,W)

    def make_images(part: slice) -> torch.Tensor:
        first, last = part.start // per_sample, (part.stop - 1) // per_sample
        for done in [k for k in directions if k < first]:
            del directions[done]
        pieces = []
        for k in range(first, last + 1):
            if k not in directions:
                generator = sample_generator(seed, ids[k], stream, device)
                directions[k] = random_orthogonal_directions(steps[k], num_directions, generator)
            j = torch.arange(max(part.start, k * per_sample) - k * per_sample,
                             min(part.stop, (k + 1) * per_sample) - k * per_sample, device=device)
            r, d = radii[j // num_directions], directions[k][j % num_directions]
            pieces.append((points[k] + r.view(-1, 1, 1, 1) * d).clamp_(0, 1))
        return torch.cat(pieces)

    confs = confidences_of(model, make_images, labels.repeat_interleave(per_sample),
                           n * per_sample, chunk_size, precision)
    q = torch.tensor([0.05, 0.95], device=device)
    spread = torch.quantile(confs.view(n, len(radii), num_directions), q, dim=2)  # (2,N,R)
    out[:, 1:] = spread.permute(1, 2, 0).cpu()
    return out
