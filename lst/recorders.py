"""What is recorded along the walks: each recorder owns its buffers and the `LSTResult` fields it fills.

`lst.traversal.level_set_traversal` calls every recorder at the same fixed points of its loop:

    start(state)                  once, the walks at their noisy start (iterate 0)
    before_step(state, i)         before step i (0-based), the walks at iterate i
    after_step(state, i, accept)  after it, the walks at iterate i (now i + 1 steps taken)
    stopped(state, stop, i)       walks where stop ((B,) bool) is True stop at iterate i; at the
                                  end, every walk still going stops at i = iters
    finish(fields)                once, after every walk stopped: fill the result's fields

Buffers over all N inputs are indexed by `state.rows`; what a recorder keeps per walk goes in
`state.extra`, which `WalkState.keep` compacts. A new recorder is one subclass of `Recorder`,
passed to `level_set_traversal(..., recorders=[...])`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import representations, resolve_layers, scores_from
from .settings import LSTSettings
from .walk import WalkState, distance_left, orthogonal_step
from .widths import path_widths


class Recorder:
    """The hooks a recorder may implement; each does nothing by default."""

    def start(self, state: WalkState) -> None:
        pass

    def before_step(self, state: WalkState, i: int) -> None:
        pass

    def after_step(self, state: WalkState, i: int, accept: torch.Tensor) -> None:
        pass

    def stopped(self, state: WalkState, stop: torch.Tensor, i: int) -> None:
        pass

    def finish(self, fields: dict) -> None:
        pass


class BlindSpots(Recorder):
    """The blind spots: each walk's last iterate and confidence, its passes and acceptance rate.

    sources, targets: (N,C,H,W) float32 on the model's device; init_confs (N,) p0 in float32;
    walks: (W,) the rows that walk (the correctly classified sources). Fills final_images (on the
    model's device), final_confs (float32: the walk's own in fp32, `lst.guard.Float32Check`'s
    under bf16/fp16), accept_rate, passes, distance_left.
    """

    def __init__(self, sources: torch.Tensor, targets: torch.Tensor, init_confs: torch.Tensor,
                 walks: torch.Tensor) -> None:
        self.targets, self.walks = targets, walks
        self.final, self.final_confs = sources.clone(), init_confs.clone()
        self.accepted = torch.zeros(len(sources), device=sources.device)
        self.passes = torch.zeros(len(sources), device=sources.device)
        self.spans = torch.zeros(0, device=sources.device)  # |x_s - x_t| of the walks

    def start(self, state: WalkState) -> None:
        self.spans = state.span
        self.passes[state.rows] = 1

    def after_step(self, state: WalkState, i: int, accept: torch.Tensor) -> None:
        self.accepted[state.rows] += accept.float()
        self.passes[state.rows] += 1

    def stopped(self, state: WalkState, stop: torch.Tensor, i: int) -> None:
        self.final[state.rows[stop]] = state.x[stop].detach()
        self.final_confs[state.rows[stop]] = state.conf[stop]

    def finish(self, fields: dict) -> None:
        walks, left = self.walks, torch.full_like(self.final_confs, float("nan"))
        left[walks] = distance_left(self.final[walks], self.targets[walks], self.spans)
        fields.update(final_images=self.final, final_confs=self.final_confs.cpu(),
                      accept_rate=(self.accepted / (self.passes - 1).clamp(min=1)).cpu(),
                      passes=self.passes.to(torch.int64).cpu(), distance_left=left.cpu())


class LogStepRecorder(Recorder):
    """A recorder of every log_step-th iterate, recording r = i // log_step of n_logs.
    Subclasses implement `record` and `hold`."""

    def __init__(self, log_step: int, n_logs: int) -> None:
        self.log_step, self.n_logs = log_step, n_logs

    def before_step(self, state: WalkState, i: int) -> None:
        if i % self.log_step == 0:
            self.record(state, i // self.log_step, state.rows.cpu())

    def stopped(self, state: WalkState, stop: torch.Tensor, i: int) -> None:
        first = -(-i // self.log_step)  # the first recording at or after iteration i
        if first < self.n_logs:
            self.hold(state, stop, state.rows[stop].cpu(), first)

    def record(self, state: WalkState, r: int, rows: torch.Tensor) -> None:
        """Record the walks (rows: their rows, on the CPU) at recording r."""
        raise NotImplementedError

    def hold(self, state: WalkState, stop: torch.Tensor, rows: torch.Tensor, first: int) -> None:
        """Walks `stop` stay where they are: fill their recordings from `first` on."""
        raise NotImplementedError


class PathRecorder(LogStepRecorder):
    """Source- and target-class confidence and distance left along the path, and with `images`
    the iterates as 8-bit images. Fills confs_over_path (N,R,2), distance_over_path (N,R) and
    images_over_path (N,R,C,H,W) uint8 or None. A stopped walk's later recordings hold its last
    iterate."""

    def __init__(self, n: int, n_logs: int, log_step: int, image_shape: Sequence[int],
                 images: bool) -> None:
        super().__init__(log_step, n_logs)
        self.confs = torch.zeros(n, n_logs, 2)
        self.distances = torch.full((n, n_logs), float("nan"))
        self.images = torch.zeros(n, n_logs, *image_shape, dtype=torch.uint8) if images else None

    def record(self, state: WalkState, r: int, rows: torch.Tensor) -> None:
        self.confs[rows, r, 0] = state.conf.cpu()
        self.confs[rows, r, 1] = state.probs.gather(1, state.target_label.view(-1, 1)).squeeze(1).cpu()
        self.distances[rows, r] = state.distance_left.cpu()
        if self.images is not None:
            self.images[rows, r] = (state.x * 255).round().to(torch.uint8).cpu()

    def hold(self, state: WalkState, stop: torch.Tensor, rows: torch.Tensor, first: int) -> None:
        target_conf = state.probs[stop].gather(1, state.target_label[stop].view(-1, 1))
        self.confs[rows, first:, 0] = state.conf[stop].cpu().view(-1, 1)
        self.confs[rows, first:, 1] = target_conf.cpu().view(-1, 1)
        self.distances[rows, first:] = state.distance_left[stop].cpu().view(-1, 1)
        if self.images is not None:
            self.images[rows, first:] = (state.x[stop] * 255).round().to(torch.uint8).cpu().unsqueeze(1)

    def finish(self, fields: dict) -> None:
        fields.update(confs_over_path=self.confs, distance_over_path=self.distances,
                      images_over_path=self.images)


class WidthRecorder(LogStepRecorder):
    """Path widths (`lst.widths.path_widths`) at the recorded iterates, sideways to each step;
    NaN after a walk stopped. sample_ids: the inputs' ids (the directions' random streams).
    Fills widths (N,R,len(width_distances)+1,2)."""

    def __init__(self, model: nn.Module, n: int, n_logs: int, settings: LSTSettings,
                 sample_ids: Sequence[int]) -> None:
        super().__init__(settings.log_step, n_logs)
        self.model, self.settings, self.ids = model, settings, sample_ids
        self.widths = torch.zeros(n, n_logs, len(settings.width_distances) + 1, 2)

    def record(self, state: WalkState, r: int, rows: torch.Tensor) -> None:
        s = self.settings
        self.widths[rows, r] = path_widths(
            self.model, state.x, orthogonal_step(state.grad, state.target - state.x), state.label,
            s.width_distances, num_directions=s.width_directions, seed=s.seed,
            sample_ids=[self.ids[k] for k in rows.tolist()], stream=f"widths/{r}",
            precision=s.precision)

    def hold(self, state: WalkState, stop: torch.Tensor, rows: torch.Tensor, first: int) -> None:
        self.widths[rows, first:] = float("nan")

    def finish(self, fields: dict) -> None:
        fields.update(widths=self.widths)


class LayerRecorder(LogStepRecorder):
    """Layer scores (`lst.layers.scores_from`: 1 = the source's representation, 0 = the
    target's) at the recorded iterates and at the blind spots. Keeps each walk's source and
    target representations in state.extra["reference"]. Fills layer_scores (N,L) and
    layer_scores_over_path (N,R,L), NaN for a skipped source."""

    def __init__(self, model: nn.Module, layers: list[str], sources: torch.Tensor, n_logs: int,
                 log_step: int) -> None:
        super().__init__(log_step, n_logs)
        self.model, self.layers, self.sources = model, layers, sources
        self.over_path = torch.full((len(sources), n_logs, len(layers)), float("nan"))
        self.final = torch.full((len(sources), len(layers)), float("nan"))
        self.walks, self.reference = None, None  # every walk's row and references, at start

    def scores(self, x: torch.Tensor, reference: list) -> torch.Tensor:
        return scores_from(representations(self.model, x, self.layers), *reference).cpu()

    def start(self, state: WalkState) -> None:
        self.walks = state.rows
        self.reference = state.extra["reference"] = [
            representations(self.model, t, self.layers) for t in (self.sources[state.rows],
                                                                  state.target)]

    def record(self, state: WalkState, r: int, rows: torch.Tensor) -> None:
        self.over_path[rows, r] = self.scores(state.x, state.extra["reference"])

    def hold(self, state: WalkState, stop: torch.Tensor, rows: torch.Tensor, first: int) -> None:
        reference = [[r[stop] for r in side] for side in state.extra["reference"]]
        self.over_path[rows, first:] = self.scores(state.x[stop], reference).unsqueeze(1)

    def finish(self, fields: dict) -> None:
        if self.walks is not None and len(self.walks):
            self.final[self.walks.cpu()] = self.scores(fields["final_images"][self.walks],
                                                       self.reference)
        fields.update(layer_scores=self.final, layer_scores_over_path=self.over_path)


class MatchedRecorder(Recorder):
    """Each walk's first iterate at the fractions f of the way to its target, progress
    1 - |x - x_t| / |x_s - x_t| >= f (the noisy start is iterate 0). Per walk in state.extra
    while it walks; fills matched_images (N,F,C,H,W) on the model's device (zeros where never
    reached), matched_iters (N,F) (-1 there) and matched_confs (N,F) (NaN there).

    check: the walks' `lst.guard.Float32Check` (under bf16/fp16, or with quantize): as a walk
    stops, its matched iterates are checked in float32 like its blind spot (rounded to 8 bits
    with quantize); one that fails counts as not reached (its walk got to f only outside the
    level set), and matched_confs are the float32 ones.
    """

    def __init__(self, fractions: Sequence[float], n: int, image_shape: Sequence[int],
                 device: torch.device, check=None) -> None:
        self.fractions, self.check = torch.tensor(fractions, device=device), check
        f = len(fractions)
        self.images = torch.zeros(n, f, *image_shape, device=device)
        self.iters = torch.full((n, f), -1, dtype=torch.int64, device=device)
        self.confs = torch.full((n, f), float("nan"), device=device)

    def start(self, state: WalkState) -> None:
        walks, f = len(state.rows), len(self.fractions)
        state.extra["matched_images"] = torch.zeros(walks, f, *state.x.shape[1:], device=state.x.device)
        state.extra["matched_iters"] = torch.full((walks, f), -1, dtype=torch.int64,
                                                  device=state.x.device)
        state.extra["matched_confs"] = torch.full((walks, f), float("nan"), device=state.x.device)
        self.record(state, 0)

    def after_step(self, state: WalkState, i: int, accept: torch.Tensor) -> None:
        self.record(state, i + 1)

    def record(self, state: WalkState, iterate: int) -> None:
        """Keep x as the matched iterate of every fraction it reaches first at `iterate`. No
        host synchronisation."""
        extra, progress = state.extra, 1 - state.distance_left
        first = (progress.view(-1, 1) >= self.fractions.view(1, -1)) & (extra["matched_iters"] < 0)
        extra["matched_images"] = torch.where(first.view(*first.shape, 1, 1, 1),
                                              state.x.unsqueeze(1), extra["matched_images"])
        extra["matched_iters"] = torch.where(first, torch.full_like(extra["matched_iters"], iterate),
                                             extra["matched_iters"])
        extra["matched_confs"] = torch.where(first, state.conf.view(-1, 1), extra["matched_confs"])

    def stopped(self, state: WalkState, stop: torch.Tensor, i: int) -> None:
        rows = state.rows[stop]
        images, iters = state.extra["matched_images"][stop], state.extra["matched_iters"][stop]
        confs = state.extra["matched_confs"][stop]
        reached = iters >= 0  # (W,F)
        if self.check is not None and reached.any():
            walk = reached.nonzero()[:, 0]
            labels = state.label[stop][walk]
            images = images.clone()
            images[reached] = self.check.as_stored(images[reached])
            ok, probs = self.check.passes(images[reached], labels, rows[walk])
            confs[reached] = torch.where(ok, probs.gather(1, labels.view(-1, 1)).squeeze(1),
                                         float("nan"))
            refused = reached.clone()
            refused[reached] = ~ok
            iters[refused], images[refused] = -1, 0.0
        self.images[rows], self.iters[rows], self.confs[rows] = images, iters, confs

    def finish(self, fields: dict) -> None:
        fields.update(matched_images=self.images, matched_iters=self.iters.cpu(),
                      matched_confs=self.confs.cpu())


class DiversityPush(Recorder):
    """The diversity of restarts: the walks of one group (the restarts of one pair) push each
    other apart, by diversity x |x_s - x_t| along the mean unit vector away from the others'
    latest iterates, projected orthogonal to the gradient (docs/design.md, 'Restarts and
    diversity'). groups: (N,) integers; sources: (N,C,H,W) on the model's device. Keeps every
    walk's latest iterate, stopped walks included."""

    def __init__(self, diversity: float, groups: torch.Tensor, sources: torch.Tensor) -> None:
        self.diversity, self.group, self.latest = diversity, groups.to(sources.device), sources.clone()
        self.walks = None  # the rows of every walk, at start

    def start(self, state: WalkState) -> None:
        self.walks = state.rows
        self.latest[state.rows] = state.x

    def after_step(self, state: WalkState, i: int, accept: torch.Tensor) -> None:
        self.latest[state.rows] = state.x

    def push(self, state: WalkState) -> torch.Tensor:
        """(B,C,H,W): the term the step adds to d_perp."""
        away = diversity_push(state.x, self.latest[self.walks], self.group[state.rows],
                              self.group[self.walks], state.rows, self.walks)
        return (self.diversity * state.span).view(-1, 1, 1, 1) * orthogonal_step(state.grad, away)


def diversity_push(x: torch.Tensor, others: torch.Tensor, group: torch.Tensor,
                   other_group: torch.Tensor, rows: torch.Tensor, other_rows: torch.Tensor
                   ) -> torch.Tensor:
    """The direction away from a walk's partners: for each x_j, the mean over the other walks k
    of its group of the unit vectors (x_j - x_k) / |x_j - x_k| (a partner at the same point adds
    nothing). x: (B,C,H,W) the walks to push, group (B,), rows (B,) their ids; others:
    (M,C,H,W) every walk's latest iterate, other_group (M,), other_rows (M,). Returns
    (B,C,H,W) float32 of norm <= 1; zero for a walk without partners."""
    flat, pool = x.flatten(1).float(), others.flatten(1).float()
    distance = torch.cdist(flat, pool, compute_mode="donot_use_mm_for_euclid_dist")  # (B,M)
    partner = (group.view(-1, 1) == other_group.view(1, -1)) & (rows.view(-1, 1) != other_rows.view(1, -1))
    weight = torch.where(partner & (distance > 0), 1 / distance.clamp_min(1e-30), 0.0)
    push = weight.sum(dim=1, keepdim=True) * flat - weight @ pool  # sum_k w_jk (x_j - x_k)
    return (push / partner.sum(dim=1, keepdim=True).clamp_min(1)).view_as(x)


def recorders_for(model: nn.Module, settings: LSTSettings, sources: torch.Tensor,
                  sample_ids: Sequence[int], groups: torch.Tensor | None = None,
                  check: Recorder | None = None) -> list[Recorder]:
    """The recorders `settings` asks for, over the inputs `sources` ((N,C,H,W) on the model's
    device, sample ids `sample_ids`); `groups` (N,) with settings.diversity > 0 adds the push;
    `check`: the walks' `lst.guard.Float32Check`, if any (matched iterates use it)."""
    n, shape = len(sources), sources.shape[1:]
    n_logs = len(range(0, settings.iters, settings.log_step))
    chosen: list[Recorder] = []
    if settings.get_confs_over_path or settings.get_images:
        chosen.append(PathRecorder(n, n_logs, settings.log_step, shape, settings.get_images))
    if settings.get_widths:
        chosen.append(WidthRecorder(model, n, n_logs, settings, sample_ids))
    if settings.get_layers:
        chosen.append(LayerRecorder(model, resolve_layers(model, settings.layers), sources,
                                    n_logs, settings.log_step))
    if settings.matched_fractions:
        chosen.append(MatchedRecorder(settings.matched_fractions, n, shape, sources.device, check))
    if settings.diversity > 0 and groups is not None:
        chosen.append(DiversityPush(settings.diversity, groups, sources))
    return chosen
