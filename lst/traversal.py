"""Level Set Traversal (paper §3): walk a source image towards a target inside the model's level set.

Each iteration moves x along d_perp, the part of (x_t - x) orthogonal to the input gradient of the
cross-entropy of the source class, and accepts the move per sample only if the source-class
confidence has not dropped by `pthresh` or more below its clean value p0.

The walk is in three parts: `lst.walk` (the state of the walks and the step, Algorithm 1),
`lst.schedules` (how far each step goes, when a walk stops) and `lst.recorders` (what is recorded
along the way). `level_set_traversal` checks its inputs, starts the walks and runs the loop:
stop, record, step, record.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch
from torch import nn

from .confidence import in_eval_mode, model_device, predict, probabilities
from .progress import progress_bar
from .recorders import BlindSpots, DiversityPush, LogStepRecorder, Recorder, recorders_for
from .guard import Float32Check
from .schedules import schedule_for
from .settings import LSTSettings
from .walk import initial_noise, lst_step, orthogonal_step, start_walks

__all__ = ["LSTResult", "LSTSettings", "check_images", "initial_noise", "level_set_traversal",
           "orthogonal_step"]


@dataclass
class LSTResult:
    """What one call of `level_set_traversal` returns. N = number of inputs, R = recordings.

    final_images: (N,C,H,W) float32 in [0,1] on the inputs' device: the blind spots, aligned
        with the inputs; a skipped (misclassified) source is returned unchanged.
    kept: (N,) bool: False where the model misclassified the source (no traversal done).
    init_confs: (N,) float32: p0, source-class confidence at the clean source (in float32).
    final_confs: (N,) float32: source-class confidence at the final image, in float32 (with
        precision bf16/fp16 evaluated in float32 as the walk stopped, `lst.guard`). Every kept
        blind spot has init_confs - final_confs < pthresh, whatever the precision.
    stepped_back: (N,) int64: 0, or under bf16/fp16 (or with quantize) how many of the walk's
        latest iterates failed the float32 check before one passed (`lst.guard.Float32Check`;
        HISTORY + 1: the blind spot is the clean source). With settings.quantize every blind
        spot and matched image is a multiple of 1/255.
    accept_rate: (N,) float32: fraction of the steps taken that were accepted.
    log_iters: (R,) int64: the iterations recorded (0, L, 2L, ... < iters).
    confs_over_path: (N,R,2) float32 or None: source- and target-class confidence at each
        recorded iterate (before its step); recorded with get_confs_over_path or get_images.
    distance_over_path: (N,R) float32 or None: |x - x_t| / |x_s - x_t| at each recorded iterate
        (recorded with the confidences; NaN for a skipped source).
    images_over_path: (N,R,C,H,W) uint8 or None: the recorded iterates, 8-bit to stay compact.
    widths: (N,R,len(width_distances)+1,2) float32 or None: path widths (see `path_widths`).
        Under the adaptive schedule, recordings after a sample stopped hold its last iterate
        (its widths there are NaN).
    passes: (N,) int64: forward+backward passes of the model the walk used for the sample (1 +
        the steps it took; 0 for a skipped source; iters + 1 under the fixed schedule).
    distance_left: (N,) float32: |x - x_t| / |x_s - x_t| at the blind spot, the fraction of the
        source-target distance still to go (NaN for a skipped source).
    matched_images: (N,F,C,H,W) float32 in [0,1] or None (F = len(settings.matched_fractions)):
        the walk's first iterate with 1 - |x - x_t| / |x_s - x_t| >= matched_fractions[f] (the
        noisy start counts as iterate 0); zeros where the walk never got that far.
    matched_iters: (N,F) int64 or None: the iteration of that iterate (0 = the start), -1 where
        the walk never reached the fraction (and for a skipped source).
    matched_confs: (N,F) float32 or None: the walk's source-class confidence there (NaN where
        not reached).
    layer_scores: (N,L) float32 or None (with get_layers; L layers, `lst.layers.resolve_layers`):
        each layer's score at the blind spot, 1 = like the source, 0 = like the target (NaN for
        a skipped source).
    layer_scores_over_path: (N,R,L) float32 or None: the same at each recorded iterate (under
        the adaptive schedule a stopped walk's later recordings hold its last iterate's).
    All tensors except final_images and matched_images are on the CPU.
    """

    final_images: torch.Tensor
    kept: torch.Tensor
    init_confs: torch.Tensor
    final_confs: torch.Tensor
    accept_rate: torch.Tensor
    log_iters: torch.Tensor
    confs_over_path: torch.Tensor | None = None
    distance_over_path: torch.Tensor | None = None
    images_over_path: torch.Tensor | None = None
    widths: torch.Tensor | None = None
    passes: torch.Tensor | None = None
    distance_left: torch.Tensor | None = None
    matched_images: torch.Tensor | None = None
    matched_iters: torch.Tensor | None = None
    matched_confs: torch.Tensor | None = None
    layer_scores: torch.Tensor | None = None
    layer_scores_over_path: torch.Tensor | None = None
    stepped_back: torch.Tensor | None = None

    def images_to(self, device: torch.device) -> "LSTResult":
        """The result with final_images and matched_images moved to `device`."""
        matched = None if self.matched_images is None else self.matched_images.to(device)
        return replace(self, final_images=self.final_images.to(device), matched_images=matched)

    def numpy(self) -> dict:
        """The result as a dict of numpy arrays (None stays None), for results files."""
        return {f.name: (None if getattr(self, f.name) is None
                         else getattr(self, f.name).detach().cpu().numpy()) for f in fields(self)}



IMAGE_TOLERANCE = 1e-6  # how far outside [0,1] an image may be (float rounding) before it is refused


def check_images(images: torch.Tensor, name: str) -> None:
    """ValueError unless `images` is a finite float (N,C,H,W) batch in [0,1] (within
    IMAGE_TOLERANCE). The message names the argument and what is wrong."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"{name} must be float images in [0,1], got "
                         f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() != 4:
        raise ValueError(f"{name} must be a (N,C,H,W) batch, got shape {tuple(images.shape)}")
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    if not finite.all():
        raise ValueError(f"{name} hold NaN or inf values (samples "
                         f"{(~finite).nonzero().flatten().tolist()})")
    if len(images) and (images.min() < -IMAGE_TOLERANCE or images.max() > 1 + IMAGE_TOLERANCE):
        raise ValueError(f"{name} must be in [0,1], got values in [{images.min().item():.4g}, "
                         f"{images.max().item():.4g}]")


@in_eval_mode
def level_set_traversal(model: nn.Module, sources: torch.Tensor, labels: torch.Tensor,
                        targets: torch.Tensor, settings: LSTSettings | None = None, *,
                        target_labels: torch.Tensor | None = None,
                        sample_ids: Sequence[int] | None = None,
                        stop_distances: torch.Tensor | None = None,
                        restarts: Sequence[int] | None = None,
                        groups: torch.Tensor | None = None,
                        recorders: Sequence[Recorder] = (), progress: bool = False,
                        **overrides) -> LSTResult:
    """Run LST from each source towards its target (paper §3); returns an `LSTResult`.

    model: maps [0,1] images (N,C,H,W) to logits; the computation runs on its device.
    sources, targets: (N,C,H,W) in [0,1]; labels: (N,) source classes; any device.
    settings: `LSTSettings` (default LSTSettings()); keyword `overrides` replace single fields.
    target_labels: (N,) the targets' classes for the path's target-class confidence (default:
        the model's prediction). sample_ids: sample k's noise comes from (settings.seed,
        sample_ids[k]) alone (default 0..N-1), so its result does not depend on its batch.
    stop_distances: (N,) adaptive schedule: each sample's own settings.stop_distance.
    restarts: (N,) restart index r: its own noise (`initial_noise`); 0 is a walk without restarts.
    groups: (N,) with settings.diversity > 0, walks of one group push each other apart.
    recorders: more `lst.recorders.Recorder`s, called after the ones the settings ask for.
    """
    settings = replace(settings or LSTSettings(), **overrides)
    ids, x_src, x_tgt, y = _checked_inputs(model, sources, labels, targets, sample_ids,
                                           stop_distances, restarts, groups)
    init_confs, kept = _source_confidences(model, x_src, y, ids)
    if (settings.get_confs_over_path or settings.get_images) and target_labels is None:
        target_labels = predict(model, x_tgt)[0]
    walks = kept.nonzero().squeeze(1)
    schedule = schedule_for(settings, stop_distances)
    check = (Float32Check(model, x_src, init_confs, settings.pthresh, settings.quantize)
             if settings.precision != "fp32" or settings.quantize else None)
    recorders = [*([check] if check else []), BlindSpots(x_src, x_tgt, init_confs, walks),
                 *recorders_for(model, settings, x_src, ids, groups, check), *recorders]
    diversity = next((r for r in recorders if isinstance(r, DiversityPush)), None)

    def stop_walks(state, stop: torch.Tensor, i: int) -> None:
        if check is not None:  # the blind spots into the level set (float32) before anyone reads them
            check.verify(state, stop)
        for recorder in recorders:
            recorder.stopped(state, stop, i)

    if len(walks):
        state = start_walks(model, x_src, x_tgt, y, target_labels, init_confs, walks, settings,
                             [ids[i] for i in walks.tolist()], restarts)
        schedule.start(state)
        for recorder in recorders:
            recorder.start(state)
        for i in progress_bar(range(settings.iters), desc="LST", disable=not progress, leave=False):
            stop = schedule.stopped(state)
            if stop is not None and stop.any():
                stop_walks(state, stop, i)
                state = state.keep(~stop)
                if len(state.rows) == 0:
                    break
            for recorder in recorders:
                recorder.before_step(state, i)
            accept, proposal = lst_step(model, state, schedule, settings,
                                        diversity.push(state) if diversity else None)
            schedule.update(state, accept, proposal)
            for recorder in recorders:
                recorder.after_step(state, i, accept)
        if len(state.rows):  # the walks still going stop here
            stop_walks(state, torch.ones_like(state.rows, dtype=torch.bool), settings.iters)
    recorded = any(isinstance(r, LogStepRecorder) for r in recorders)
    result = dict(kept=kept.cpu(), init_confs=init_confs.detach().cpu(),
                  log_iters=torch.arange(0, settings.iters if recorded else 0, settings.log_step),
                  stepped_back=torch.zeros(len(kept), dtype=torch.int64))
    for recorder in recorders:
        recorder.finish(result)
    return LSTResult(**result).images_to(sources.device)


def _checked_inputs(model: nn.Module, sources: torch.Tensor, labels: torch.Tensor,
                    targets: torch.Tensor, sample_ids: Sequence[int] | None,
                    stop_distances: torch.Tensor | None, restarts: Sequence[int] | None,
                    groups: torch.Tensor | None
                    ) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check every input of `level_set_traversal` (ValueError naming the argument); returns the
    sample ids (default 0..N-1), and the sources (float32, clamped to [0,1]: within the
    tolerance of `check_images`), targets and labels (int64) on the model's device."""
    n = len(sources)
    ids = list(range(n)) if sample_ids is None else [int(i) for i in sample_ids]
    check_images(sources, "sources")
    check_images(targets, "targets")
    if sources.shape != targets.shape:
        raise ValueError(f"sources {tuple(sources.shape)} and targets {tuple(targets.shape)} "
                         "must have the same shape")
    if labels.shape != (n,) or labels.is_floating_point() or len(ids) != n:
        raise ValueError(f"labels must be (N,) integers and sample_ids N ids, N = {n}")
    if stop_distances is not None and stop_distances.shape != (n,):
        raise ValueError(f"stop_distances must be (N,), N = {n}, got {tuple(stop_distances.shape)}")
    if (restarts is not None and len(restarts) != n) or (groups is not None and groups.shape != (n,)):
        raise ValueError(f"restarts and groups must have one entry per input, N = {n}")
    device = model_device(model)
    return (ids, sources.to(device, torch.float32).clamp(0, 1),
            targets.to(device, torch.float32).clamp(0, 1), labels.to(device, torch.int64))


def _source_confidences(model: nn.Module, sources: torch.Tensor, labels: torch.Tensor,
                        ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """p0 (N,) float32 and kept (N,) bool (the model predicts the label) at the clean sources;
    ValueError for labels outside the model's classes or outputs that are not finite."""
    probs = probabilities(model, sources)
    num_classes = probs.shape[1]
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        raise ValueError(f"labels must be classes of the model's {num_classes} outputs, got "
                         f"{sorted(set(labels[outside].tolist()))}")
    broken = ~torch.isfinite(probs).all(dim=1)
    if broken.any():
        raise ValueError(f"the model's outputs are not finite at sample(s) "
                         f"{[ids[i] for i in broken.nonzero().flatten().tolist()]}")
    return probs.gather(1, labels.view(-1, 1)).squeeze(1), probs.argmax(dim=1) == labels
