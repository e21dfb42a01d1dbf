"""Step schedules: how far each step of a walk goes, and when a walk stops.

A schedule has four methods, called by `lst.traversal.level_set_traversal` at fixed points:
`start(state)` once, `stopped(state)` before each step ((B,) bool of walks to stop, or None),
`move(state, d_perp)` inside the step (eta d_perp of Algorithm 1) and `update(state, accept,
proposal)` after it (`lst.walk.Proposal`: the move tried, and the model's output there). What
it keeps per walk lives in `state.extra`, so `WalkState.keep` compacts it.
docs/design.md, "The step schedule".
"""
from __future__ import annotations

import torch

from .settings import LSTSettings
from .walk import Proposal, WalkState


class FixedSchedule:
    """The paper's: every step moves step_size along d_perp, and walks run all iterations."""

    def __init__(self, settings: LSTSettings) -> None:
        self.step_size = settings.step_size

    def start(self, state: WalkState) -> None:
        pass

    def stopped(self, state: WalkState) -> None:
        return None

    def move(self, state: WalkState, direction: torch.Tensor) -> torch.Tensor:
        return self.step_size * direction

    def update(self, state: WalkState, accept: torch.Tensor, proposal: Proposal) -> None:
        pass


class AdaptiveSchedule:
    """A step size per walk (a fraction of the way to the target): it starts at step_start, grows
    by step_grow after an accepted step, up to step_max, and shrinks by step_shrink after a
    refused one. With `retry`, a refused step is first tried once more at the same size, its
    move corrected back into the level set (`newton_correction` with the gradient at the refused
    proposal, aiming at p0 - pthresh/2): most refusals are the level set curving away from the
    straight move, not a step too long. With `corrector`, each move also goes back towards p0
    along the gradient at hand.

    A walk stops within stop_distance of its target (or its own entry of `stop_distances`), once
    its step size falls below step_min, or when its distance left has fallen by less than
    stall_tolerance (relative) over its last stall_steps accepted steps (refused steps are the
    step size's business: a run of them is not a stall).

    Per walk in state.extra: "step" (B,), "stop_at" (B,), "history" (B, stall_steps + 1), the
    distance left after this and the last stall_steps accepted steps (inf before them); with
    retry, "retrying" (B,) bool and "retry_move" (B,C,H,W), the corrected move to try next.
    """

    def __init__(self, settings: LSTSettings, stop_distances: torch.Tensor | None = None) -> None:
        self.settings = settings
        self.stop_distances = stop_distances

    def start(self, state: WalkState) -> None:
        s, walks, device = self.settings, len(state.rows), state.x.device
        state.extra["step"] = torch.full((walks,), min(s.step_start, s.step_max), device=device)
        state.extra["stop_at"] = (
            torch.full((walks,), s.stop_distance, device=device) if self.stop_distances is None
            else self.stop_distances.to(device, torch.float32)[state.rows])
        state.extra["history"] = torch.full((walks, s.stall_steps + 1), float("inf"),
                                            device=device)
        if s.retry:
            state.extra["retrying"] = torch.zeros(walks, dtype=torch.bool, device=device)
            state.extra["retry_move"] = torch.zeros_like(state.x)

    def stopped(self, state: WalkState) -> torch.Tensor:
        s, left, history = self.settings, state.distance_left, state.extra["history"]
        stop = (left <= state.extra["stop_at"]) | (state.extra["step"] < s.step_min)
        if s.stall_steps:  # history[:, k]: the distance left k accepted steps ago
            stop |= history[:, -1] - history[:, 0] < s.stall_tolerance * history[:, -1]
        return stop

    def move(self, state: WalkState, direction: torch.Tensor) -> torch.Tensor:
        move = state.extra["step"].view(-1, 1, 1, 1) * direction
        if self.settings.corrector:
            move = move + newton_correction(state.grad, state.conf, state.p0, move)
        if self.settings.retry:
            move = torch.where(state.extra["retrying"].view(-1, 1, 1, 1),
                               state.extra["retry_move"], move)
        return move

    def update(self, state: WalkState, accept: torch.Tensor, proposal: Proposal) -> None:
        s, step = self.settings, state.extra["step"]
        shrink = ~accept
        if s.retry:
            retry = ~accept & ~state.extra["retrying"]  # a first refusal: try again, corrected
            corrected = proposal.move + newton_correction(
                proposal.grad, proposal.conf, state.p0 - s.pthresh / 2, proposal.move)
            state.extra["retry_move"] = torch.where(retry.view(-1, 1, 1, 1), corrected,
                                                    state.extra["retry_move"])
            state.extra["retrying"], shrink = retry, shrink & ~retry
        state.extra["step"] = torch.where(accept, (step * s.step_grow).clamp(max=s.step_max),
                                          torch.where(shrink, step * s.step_shrink, step))
        if s.stall_steps:
            history = state.extra["history"]
            rolled = torch.cat([state.distance_left.view(-1, 1), history[:, :-1]], dim=1)
            state.extra["history"] = torch.where(accept.view(-1, 1), rolled, history)


def schedule_for(settings: LSTSettings, stop_distances: torch.Tensor | None = None
                 ) -> FixedSchedule | AdaptiveSchedule:
    """The schedule `settings.schedule` names; `stop_distances` (N,) only for the adaptive one."""
    if settings.schedule == "adaptive":
        return AdaptiveSchedule(settings, stop_distances)
    return FixedSchedule(settings)


def newton_correction(grad: torch.Tensor, conf: torch.Tensor, aim: torch.Tensor,
                      move: torch.Tensor) -> torch.Tensor:
    """The corrector of a level-set continuation, with the gradient at hand: a Newton step
    (aim - p) g_p / |g_p|^2 up to the confidence `aim` (p0 for the corrector), where g_p = -p grad
    is the gradient of the source-class confidence p (grad: of the cross-entropy). Only below
    aim (above, the walk is already safe), and never longer than the step `move` it is added
    to. All (N,C,H,W) but conf, aim (N,); returns (N,C,H,W) float32.
    """
    g_p = -(conf.view(-1, 1, 1, 1) * grad)
    norm2 = g_p.flatten(1).pow(2).sum(dim=1).clamp_min(1e-30)
    gap = (aim - conf).clamp(min=0)
    correction = (gap / norm2).view(-1, 1, 1, 1) * g_p
    length = correction.flatten(1).norm(dim=1)
    cap = move.flatten(1).norm(dim=1)
    scale = torch.where(length > cap, cap / length.clamp_min(1e-30), torch.ones_like(length))
    return correction * scale.view(-1, 1, 1, 1)
