"""Path width (docs/design.md, "Measurements"): how far the level set extends sideways around an LST iterate."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .batching import sample_generator
from .confidence import class_confidence, confidences_of


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


@torch.inference_mode()
def path_widths(model: nn.Module, points: torch.Tensor, steps: torch.Tensor, labels: torch.Tensor,
                distances: Sequence[float], *, num_directions: int = 256, seed: int = 0,
                sample_ids: Sequence[int] | None = None, stream: str = "widths",
                chunk_size: int = 512) -> torch.Tensor:
    """Percentiles of source-class confidence at distance r around each point, sideways to its step.

    points: (N,C,H,W) iterates in [0,1]; steps: (N,C,H,W) their step directions d_perp;
    labels: (N,) source classes; all on the model's device. For each point, `num_directions`
    Gaussian directions are drawn from (seed, sample id, stream), made orthogonal to the step and
    unit-norm, and p_y is evaluated at clip(x + r u, 0, 1) for every r in `distances`, at most
    `chunk_size` images per forward.

    Returns (N, len(distances)+1, 2) float32 on CPU: row 0 holds the confidence at the point
    itself (in both columns), row k+1 the 5th and 95th percentiles over directions at distances[k].
    """
    n = len(points)
    ids = range(n) if sample_ids is None else sample_ids
    radii = torch.as_tensor(list(distances), dtype=torch.float32, device=points.device)
    out = torch.empty(n, len(radii) + 1, 2)
    out[:, 0, :] = class_confidence(model(points), labels).cpu().unsqueeze(1)
    q = torch.tensor([0.05, 0.95], device=points.device)
    for k in range(n):
        generator = sample_generator(seed, ids[k], stream, points.device)
        dirs = random_orthogonal_directions(steps[k], num_directions, generator)
        total = num_directions * len(radii)

        def make_images(part: slice) -> torch.Tensor:
            idx = torch.arange(part.start, part.stop, device=points.device)
            r, d = radii[idx // num_directions], dirs[idx % num_directions]
            return (points[k] + r.view(-1, 1, 1, 1) * d).clamp_(0, 1)

        confs = confidences_of(model, make_images, labels[k].expand(total), total, chunk_size)
        out[k, 1:] = torch.quantile(confs.view(len(radii), num_directions), q, dim=1).T.cpu()
    return out
