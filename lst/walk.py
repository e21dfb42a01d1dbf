"""The walk of Level Set Traversal: its state and its step (paper §3, Algorithm 1).

`WalkState` holds the walks still going, one row each; `lst_step` moves every one of them once.
The engine around them (`lst.traversal.level_set_traversal`) adds the schedule (`lst.schedules`)
and what is recorded along the way (`lst.recorders`).

One forward+backward per step (docs/design.md, "The fused step"): the pass at the proposal x'
both decides acceptance and gives the next step's gradient for every accepted walk; a refused walk
stays where it was, so its cached gradient is still its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .batching import sample_generator
from .confidence import probabilities
from .precision import autocast, model_input
from .settings import LSTSettings


@dataclass
class WalkState:
    """The walks still going, B of them, one row each; every tensor is on the model's device.

    x: (B,C,H,W) float32 in [0,1], the current iterate. target: (B,C,H,W), x_t.
    label: (B,) int64 source classes; target_label: (B,) int64 or None (only path recording
        reads it). p0: (B,) float32 source-class confidence at the clean source, computed in the
        walk's precision (the acceptance test compares confidences of one arithmetic).
    probs: (B,K) float32 softmax at x; grad: (B,C,H,W) float32 grad_x CE(f(x), label).
    adv: (B,C,H,W) the adversarial term (zero unless settings.adv_step_size).
    span: (B,) |x_s - x_t|; rows: (B,) int64, each walk's row among the inputs.
    extra: what a schedule or recorder keeps per walk, by name: a tensor with B rows, or a
        (nested) list of them.

    `keep(mask)` compacts every field, `extra` included, so no per-walk tensor can be left out.
    """

    x: torch.Tensor
    target: torch.Tensor
    label: torch.Tensor
    target_label: torch.Tensor | None
    p0: torch.Tensor
    probs: torch.Tensor
    grad: torch.Tensor
    adv: torch.Tensor
    span: torch.Tensor
    rows: torch.Tensor
    extra: dict = field(default_factory=dict)

    @property
    def conf(self) -> torch.Tensor:
        """(B,) float32: the source-class confidence at x."""
        return self.probs.gather(1, self.label.view(-1, 1)).squeeze(1)

    @property
    def distance_left(self) -> torch.Tensor:
        """(B,) float32: |x - x_t| / |x_s - x_t|, the fraction of the way still to go."""
        return distance_left(self.x, self.target, self.span)

    def keep(self, mask: torch.Tensor) -> "WalkState":
        """The walks where `mask` ((B,) bool) is True, every field compacted."""
        def compact(value):
            if value is None:
                return None
            if isinstance(value, torch.Tensor):
                return value[mask]
            if isinstance(value, list):
                return [compact(v) for v in value]
            if isinstance(value, dict):
                return {name: compact(v) for name, v in value.items()}
            raise TypeError(f"a walk's state holds tensors, lists and dicts of them, got "
                            f"{type(value).__name__}")
        return WalkState(**{f.name: compact(getattr(self, f.name)) for f in fields(self)})


@dataclass
class Proposal:
    """The step just tried, for every walk of the state (accepted or not): move (B,C,H,W), the
    schedule's eta d_perp (before the adversarial term); conf (B,) float32, the source-class
    confidence, and grad (B,C,H,W) float32 at the proposal x' (the refused walks' are read by
    `lst.schedules`' retry)."""

    move: torch.Tensor
    conf: torch.Tensor
    grad: torch.Tensor


class Schedule(Protocol):
    """How far each step goes and when a walk stops (`lst.schedules`)."""

    def start(self, state: WalkState) -> None: ...
    def stopped(self, state: WalkState) -> torch.Tensor | None: ...
    def move(self, state: WalkState, direction: torch.Tensor) -> torch.Tensor: ...
    def update(self, state: WalkState, accept: torch.Tensor, proposal: Proposal) -> None: ...


def lst_step(model: nn.Module, state: WalkState, schedule: Schedule, settings: LSTSettings,
             push: torch.Tensor | None = None) -> tuple[torch.Tensor, Proposal]:
    """One iteration of Algorithm 1 for every walk in `state`, which it updates in place.

    d_perp = d - (<g,d>/<g,g>) g, d = x_t - x, g = grad_x CE(f(x), y)   (the projection, eq. 2)
    a <- clip(a + (eps/2) g, -eps, eps)                           (the adversarial term, eq. 3)
    x' = clip(x + eta d_perp - a, 0, 1)                                    (the proposal)
    x <- x'  where  p0 - p_y(x') < delta - m                               (the acceptance test)

    m is `settings.acceptance_margin` (default 0; under bf16/fp16 `lst.guard` checks the blind
    spots in float32 whatever m). eta d_perp is the schedule's `move` (the paper's fixed eta, or a step size per walk);
    `push` (B,C,H,W), if given, is added to d_perp (the diversity of restarts). The forward and
    backward at x' give the next gradient of every accepted walk. Returns accept, (B,) bool,
    and the `Proposal` tried (for the schedule's `update`).
    """
    direction = orthogonal_step(state.grad, state.target - state.x)
    if push is not None:
        direction = direction + push
    if settings.adv_step_size is not None:
        eps = settings.adv_step_size
        state.adv = (state.adv + (eps / 2) * state.grad).clamp(-eps, eps)
    move = schedule.move(state, direction)
    proposal = (state.x + move - state.adv).clamp(0, 1)
    probs, grad = confidence_and_grad(model, proposal, state.label, settings.precision)
    conf = probs.gather(1, state.label.view(-1, 1)).squeeze(1)
    accept = (state.p0 - conf) < settings.pthresh - settings.acceptance_margin
    state.x = torch.where(accept.view(-1, 1, 1, 1), proposal, state.x)
    state.grad = torch.where(accept.view(-1, 1, 1, 1), grad, state.grad)
    state.probs = torch.where(accept.view(-1, 1), probs, state.probs)
    return accept, Proposal(move, conf, grad)


def orthogonal_step(grad: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """d - (<g,d>/<g,g>) g per sample, over all pixels; d itself where g == 0. (N,C,H,W) -> same.

    The gradient is first rescaled by its largest entry per sample (the projection does not
    change), so tiny gradients of a nearly saturated softmax neither underflow nor give NaN.
    """
    n = grad.shape[0]
    g = grad.reshape(n, -1).float()
    d = direction.reshape(n, -1).float()
    scale = g.abs().amax(dim=1, keepdim=True)
    g = torch.where(scale > 0, g / scale.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    gg = (g * g).sum(dim=1, keepdim=True)
    coef = torch.where(gg > 0, (g * d).sum(dim=1, keepdim=True) / gg.clamp_min(1e-30), 0.0)
    return (d - coef * g).view_as(direction).to(direction.dtype)


def distance_left(x: torch.Tensor, targets: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """|x - x_t| / |x_s - x_t| per sample ((N,C,H,W), (N,C,H,W), (N,) -> (N,)); 0 where the
    source is its target."""
    left = (targets - x).flatten(1).norm(dim=1)
    return torch.where(span > 0, left / span.clamp_min(1e-30), torch.zeros_like(left))


FP16_LOSS_SCALE = 2.0 ** 10  # norm of each sample's scaled logit gradient under fp16


def confidence_and_grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                        precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward: softmax probabilities (N,K) and grad_x CE(f(x), y) per sample,
    both float32, the model run in `precision` (lst.precision).

    The loss is summed over the batch, so each sample's gradient is its own, unscaled. Under
    fp16, small gradients (a nearly saturated softmax) would flush to zero in the backward pass:
    each sample's loss is scaled so that its logit gradient has norm FP16_LOSS_SCALE, and its
    input gradient is unscaled in float32 (the adversarial term needs the true magnitude). A
    backward that overflows is redone with a 32x smaller scale, and at last in float32.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast(precision, x.device):
            logits = model(model_input(model, x, precision)).float()
        probs = torch.softmax(logits.detach(), dim=1)
        if precision != "fp16":
            grad, = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x)
            return probs, grad
        losses = F.cross_entropy(logits, labels, reduction="none")
        logit_grad = (probs - F.one_hot(labels, probs.shape[1])).norm(dim=1)
        for shrink in (1.0, 2.0 ** -5, 2.0 ** -10):
            scale = FP16_LOSS_SCALE * shrink / logit_grad.clamp_min(2.0 ** -100)
            grad, = torch.autograd.grad((losses * scale).sum(), x, retain_graph=True)
            grad = grad / scale.view(-1, *([1] * (x.dim() - 1)))
            if torch.isfinite(grad).all():
                return probs, grad
    return probs, confidence_and_grad(model, x, labels, "fp32")[1]  # overflowed three times


def initial_noise(shape: Sequence[int], init_noise: float, seed: int, sample_ids: Sequence[int],
                  restarts: Sequence[int] | None = None) -> torch.Tensor:
    """Uniform noise in [-init_noise/2, +init_noise/2], one CPU stream per (sample id, restart):
    restart 0 (the default) draws the noise a walk without restarts draws, restart r > 0 an
    independent stream.

    Returns (len(sample_ids), *shape) float32 on the CPU; identical on every device and batch.
    """
    noise = torch.empty(len(sample_ids), *shape)
    restarts = [0] * len(sample_ids) if restarts is None else restarts
    for k, (sid, restart) in enumerate(zip(sample_ids, restarts)):
        stream = "init_noise" if restart == 0 else f"init_noise/restart{int(restart)}"
        generator = sample_generator(seed, sid, stream)
        noise[k] = (torch.rand(tuple(shape), generator=generator) - 0.5) * init_noise
    return noise


def start_walks(model: nn.Module, sources: torch.Tensor, targets: torch.Tensor,
                labels: torch.Tensor, target_labels: torch.Tensor | None,
                init_confs: torch.Tensor, walks: torch.Tensor, settings: LSTSettings,
                walk_ids: list[int], restarts: Sequence[int] | None) -> WalkState:
    """The walks of rows `walks` at their start: each source plus its noise (`initial_noise`),
    with the probabilities and gradient there (one forward+backward)."""
    xs, y = sources[walks], labels[walks]
    p0 = init_confs[walks]
    if settings.precision != "fp32":  # the acceptance test compares confidences of one arithmetic
        p0 = probabilities(model, xs, precision=settings.precision).gather(1, y.view(-1, 1)).squeeze(1)
    noise = initial_noise(sources.shape[1:], settings.init_noise, settings.seed, walk_ids,
                          None if restarts is None else [restarts[i] for i in walks.tolist()])
    x = (xs + noise.to(xs.device)).clamp(0, 1)
    probs, grad = confidence_and_grad(model, x, y, settings.precision)
    return WalkState(x=x, target=targets[walks], label=y,
                     target_label=None if target_labels is None
                     else target_labels.to(x.device, torch.int64)[walks],
                     p0=p0, probs=probs, grad=grad, adv=torch.zeros_like(x),
                     span=(targets[walks] - xs).flatten(1).norm(dim=1), rows=walks.clone())
