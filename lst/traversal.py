"""Level Set Traversal (paper §3): walk a source image towards a target inside the model's level set.

Each iteration moves x along d_perp, the part of (x_t - x) orthogonal to the input gradient of the
cross-entropy of the source class, and accepts the move per sample only if the source-class
confidence has not dropped by `pthresh` or more below its clean value p0.

The literal algorithm evaluates the model at x (forward+backward) and at the proposal x'
(forward). Here the forward+backward at x' does both jobs: its confidence decides acceptance and
its gradient is the next iteration's gradient for every accepted sample; a rejected sample stays
where it was, so its cached gradient is still right. That is T+1 forward+backward passes for T
iterations, with the same trajectory as the literal loop (docs/design.md, "The fused step").

`LSTSettings` is the one home of the hyperparameters and their defaults: the command line builds
its flags from its fields.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .batching import sample_generator
from .confidence import class_confidence_of, in_eval_mode, model_device, predict, probabilities
from .layers import representations, resolve_layers, scores_from
from .precision import PRECISIONS, autocast, check_precision, model_input
from .progress import progress_bar
from .widths import path_widths

PAPER_ADV_STEP_SIZE = 1 / 255  # eps when the adversarial term is switched on (--adv_pert) alone
SCHEDULES = ("fixed", "adaptive")
ADAPTIVE_FIELDS = ("step_grow", "step_shrink", "step_max", "step_min", "stop_distance",
                   "stall_steps", "stall_tolerance", "corrector")


@dataclass(frozen=True)
class LSTSettings:
    """The hyperparameters of LST (paper §3) and what to record along the path.

    Each field's metadata["help"] is its command-line help; the flag has the field's name.
    adv_step_size is the one exception: None turns the adversarial term off, and on the command
    line `--adv_pert` switches it on with `--adv_step_size` (default PAPER_ADV_STEP_SIZE).
    Invalid values raise ValueError naming the field.
    """

    step_size: float = field(default=5e-2, metadata={"help": "eta, the step along d_perp"})
    iters: int = field(default=100, metadata={"help": "T, the number of iterations"})
    pthresh: float = field(default=0.05, metadata={
        "help": "delta in (0, 1]: a step is accepted while p0 - p < delta"})
    adv_step_size: float | None = field(default=None, metadata={
        "help": "eps of the adversarial term (with --adv_pert)", "switch": "adv_pert",
        "switch_help": "add the adversarial term", "switch_default": PAPER_ADV_STEP_SIZE})
    init_noise: float = field(default=4 / 255, metadata={
        "help": "nu, width of the uniform noise added to the source at the start"})
    log_step: int = field(default=10, metadata={"help": "record every L iterations"})
    get_confs_over_path: bool = field(default=False, metadata={
        "help": "record source- and target-class confidence along the path"})
    get_images: bool = field(default=False, metadata={
        "help": "record images along the path (and with them the confidences, as "
                "get_confs_over_path does)"})
    get_widths: bool = field(default=False, metadata={"help": "record path widths along the path"})
    width_distances: tuple[float, ...] = field(default=(5.0, 10.0, 15.0, 20.0, 25.0, 30.0), metadata={
        "help": "L2 distances r of the path widths"})
    width_directions: int = field(default=256, metadata={
        "help": "random orthogonal directions per path width"})
    seed: int = field(default=0, metadata={"help": "seed of the noise, the choice of images "
                                                   "and the path-width directions"})
    precision: str = field(default="fp32", metadata={
        "help": "the model's arithmetic: fp32 (the paper's), or bf16/fp16 autocast (faster; "
                "the blind spots' confidences are re-evaluated in fp32)",
        "choices": tuple(PRECISIONS)})
    schedule: str = field(default="fixed", metadata={
        "help": "fixed: every step moves step_size of the way (the paper's); adaptive: a step "
                "size per sample that grows after accepted steps and shrinks after rejected "
                "ones; a sample stops near its target, out of step size or stalled "
                "(docs/design.md, 'The step schedule')",
        "choices": SCHEDULES})
    step_grow: float = field(default=1.5, metadata={
        "help": "adaptive: the step size's factor after an accepted step"})
    step_shrink: float = field(default=0.5, metadata={
        "help": "adaptive: the step size's factor after a rejected step"})
    step_max: float = field(default=0.5, metadata={
        "help": "adaptive: the largest step size (fraction of the way to the target)"})
    step_min: float = field(default=1e-3, metadata={
        "help": "adaptive: a sample stops once its step size falls below this"})
    stop_distance: float = field(default=0.01, metadata={
        "help": "adaptive: a sample stops within this fraction of its source-target distance "
                "from the target"})
    stall_steps: int = field(default=20, metadata={
        "help": "adaptive: a sample also stops when its distance left has fallen by less than "
                "stall_tolerance (relative) over its last stall_steps steps (0: never)"})
    stall_tolerance: float = field(default=0.02, metadata={
        "help": "adaptive: see stall_steps"})
    corrector: bool = field(default=False, metadata={
        "help": "adaptive: each step also moves along the gradient back towards p0 (a Newton "
                "step with the gradient at hand, no extra pass)"})
    diversity: float = field(default=0.0, metadata={
        "help": "lambda >= 0: with --restarts, each step also pushes a walk away from the other "
                "walks of its pair, lambda x |x_s - x_t| along the mean unit vector away from "
                "them, projected orthogonal to the gradient like the step (docs/design.md, "
                "'Restarts and diversity')"})
    get_layers: bool = field(default=False, metadata={
        "help": "record layer scores (0 = the target's representation, 1 = the source's; "
                "docs/design.md, 'Layer scores') at the blind spot and at the recorded iterates, "
                "at --layers or the architecture's default layers"})
    layers: tuple[str, ...] = field(default=(), metadata={
        "help": "with --get_layers: the named modules to record (names as model.named_modules() "
                "gives them; default: the architecture's stages or blocks)",
        "item_type": str})
    matched_fractions: tuple[float, ...] = field(default=(), metadata={
        "help": "record each walk's first iterate at these fractions f of the way to its "
                "target, f = 1 - |x - x_t| / |x_s - x_t| (e.g. 0.25 0.5 0.75 0.9); full_eval "
                "--get_final_imgs measures chords and triangles at each f",
        "item_type": float})

    def __post_init__(self) -> None:
        object.__setattr__(self, "width_distances", tuple(self.width_distances))
        object.__setattr__(self, "matched_fractions",
                           tuple(sorted({float(f) for f in self.matched_fractions})))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.layers:  # naming layers asks for them
            object.__setattr__(self, "get_layers", True)
        check_precision(self.precision)
        finite = {"step_size": self.step_size, "pthresh": self.pthresh,
                  "init_noise": self.init_noise}
        if self.adv_step_size is not None:
            finite["adv_step_size"] = self.adv_step_size
        for name, value in finite.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        if not 0 < self.pthresh <= 1:
            raise ValueError(f"pthresh must be in (0, 1], got {self.pthresh}")
        if self.adv_step_size is not None and self.adv_step_size <= 0:
            raise ValueError(f"adv_step_size must be positive, got {self.adv_step_size}")
        if self.init_noise < 0:
            raise ValueError(f"init_noise must be >= 0, got {self.init_noise}")
        if self.iters < 0:
            raise ValueError(f"iters must be >= 0, got {self.iters}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                             f"got {self.schedule!r}")
        if not (math.isfinite(self.step_grow) and self.step_grow >= 1):
            raise ValueError(f"step_grow must be >= 1, got {self.step_grow}")
        if not 0 < self.step_shrink < 1:
            raise ValueError(f"step_shrink must be in (0, 1), got {self.step_shrink}")
        if not 0 < self.step_min <= self.step_max <= 1:
            raise ValueError(f"need 0 < step_min <= step_max <= 1, got step_min {self.step_min}, "
                             f"step_max {self.step_max}")
        if not 0 <= self.stop_distance < 1:
            raise ValueError(f"stop_distance must be in [0, 1), got {self.stop_distance}")
        if self.stall_steps < 0 or not 0 <= self.stall_tolerance < 1:
            raise ValueError(f"need stall_steps >= 0 and stall_tolerance in [0, 1), got "
                             f"{self.stall_steps}, {self.stall_tolerance}")
        if self.schedule == "adaptive" and self.step_size < self.step_min:
            raise ValueError(f"the adaptive schedule starts at step_size, which must be >= "
                             f"step_min, got {self.step_size} < {self.step_min}")
        if not (math.isfinite(self.diversity) and self.diversity >= 0):
            raise ValueError(f"diversity must be >= 0, got {self.diversity}")
        if not all(0 < f < 1 for f in self.matched_fractions):  # NaN fails too
            raise ValueError(f"matched_fractions must be in (0, 1), got "
                             f"{list(self.matched_fractions)}")
        for name in ("log_step", "width_directions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.width_distances or not all(math.isfinite(r) and r > 0
                                               for r in self.width_distances):
            raise ValueError(f"width_distances must be positive finite numbers, got "
                             f"{list(self.width_distances)}")

    def as_dict(self, complete: bool = False) -> dict:
        """The settings as plain values (tuples as lists), for results files and run keys.
        Unless `complete`, the fixed schedule leaves out the schedule's fields, and diversity,
        matched_fractions, get_layers and layers are left out while off, so runs of the paper's
        algorithm keep the run ids they had before these settings existed."""
        values = dict(asdict(self), width_distances=list(self.width_distances),
                      matched_fractions=list(self.matched_fractions), layers=list(self.layers))
        if not complete:
            if self.schedule == "fixed":
                for name in ("schedule", *ADAPTIVE_FIELDS):
                    values.pop(name)
            for name, off in (("diversity", 0.0), ("matched_fractions", []),
                              ("get_layers", False), ("layers", [])):
                if values[name] == off:
                    values.pop(name)
        return values


@dataclass
class LSTResult:
    """What one call of `level_set_traversal` returns. N = number of inputs, R = recordings.

    final_images: (N,C,H,W) float32 in [0,1] on the inputs' device: the blind spots, aligned
        with the inputs; a skipped (misclassified) source is returned unchanged.
    kept: (N,) bool: False where the model misclassified the source (no traversal done).
    init_confs: (N,) float32: p0, source-class confidence at the clean source (in float32).
    final_confs: (N,) float32: source-class confidence at the final image (in float32; with
        precision bf16/fp16 re-evaluated in float32 after the walk).
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

    def numpy(self) -> dict:
        """The result as a dict of numpy arrays (None stays None), for results files."""
        return {f.name: (None if getattr(self, f.name) is None
                         else getattr(self, f.name).detach().cpu().numpy()) for f in fields(self)}


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


FP16_LOSS_SCALE = 2.0 ** 10  # norm of each sample's scaled logit gradient under fp16


def _confidence_and_grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
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
    return probs, _confidence_and_grad(model, x, labels, "fp32")[1]  # overflowed three times


@in_eval_mode
def level_set_traversal(model: nn.Module, sources: torch.Tensor, labels: torch.Tensor,
                        targets: torch.Tensor, settings: LSTSettings | None = None, *,
                        target_labels: torch.Tensor | None = None,
                        sample_ids: Sequence[int] | None = None,
                        stop_distances: torch.Tensor | None = None,
                        restarts: Sequence[int] | None = None,
                        groups: torch.Tensor | None = None, progress: bool = False,
                        **overrides) -> LSTResult:
    """Run LST from each source towards its target (paper §3).

    model: maps [0,1] images (N,C,H,W) to logits; the computation runs on its device.
    sources, targets: (N,C,H,W) in [0,1]; labels: (N,) source classes; any device.
    settings: the hyperparameters (`LSTSettings`, default LSTSettings()); keyword `overrides`
        replace single fields, e.g. `level_set_traversal(model, x, y, t, iters=400)`.
    target_labels: (N,) classes of the targets for the target-class confidence over the path;
        by default the model's prediction on the targets.
    sample_ids: the noise of sample k comes from (settings.seed, sample_ids[k]) alone (default
        ids 0..N-1), so a sample's result does not depend on the batch it is in.
    stop_distances: (N,) for the adaptive schedule, the distance left (fraction of the
        source-target distance) at which each sample stops, in place of settings.stop_distance
        (e.g. to walk each pair until it is as close as another run got).
    restarts: (N,) the restart index of each input: restart r of sample id k draws its own
        noise (`initial_noise`); restart 0 (the default) is the walk a run without restarts does.
    groups: (N,) integers: with settings.diversity > 0, the walks of one group (the restarts of
        one pair) push each other apart (`diversity_push`); a walk alone in its group is not
        pushed.
    Returns an `LSTResult`.
    """
    settings = replace(settings or LSTSettings(), **overrides)
    device = model_device(model)
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
    x_src = sources.to(device, torch.float32).clamp(0, 1)  # within the tolerance of [0,1]
    x_tgt = targets.to(device, torch.float32).clamp(0, 1)
    y = labels.to(device, torch.int64)

    probs_src = probabilities(model, x_src)
    num_classes = probs_src.shape[1]
    if ((y < 0) | (y >= num_classes)).any():
        raise ValueError(f"labels must be classes of the model's {num_classes} outputs, got "
                         f"{sorted(set(labels[(labels < 0) | (labels >= num_classes)].tolist()))}")
    broken = ~torch.isfinite(probs_src).all(dim=1)
    if broken.any():
        raise ValueError(f"the model's outputs are not finite at sample(s) "
                         f"{[ids[i] for i in broken.nonzero().flatten().tolist()]}")
    kept = probs_src.argmax(dim=1) == y
    init_confs = probs_src.gather(1, y.view(-1, 1)).squeeze(1)
    record_confs = settings.get_confs_over_path or settings.get_images
    if record_confs and target_labels is None:
        target_labels = predict(model, x_tgt)[0]
    y_tgt = None if target_labels is None else target_labels.to(device, torch.int64)

    layers = resolve_layers(model, settings.layers) if settings.get_layers else []
    log_iters = torch.arange(0, settings.iters, settings.log_step)
    n_logs = len(log_iters) if record_confs or settings.get_widths or layers else 0
    confs_over_path = torch.zeros(n, n_logs, 2) if record_confs else None
    distance_over_path = torch.full((n, n_logs), float("nan")) if record_confs else None
    images_over_path = (torch.zeros(n, n_logs, *sources.shape[1:], dtype=torch.uint8)
                        if settings.get_images else None)
    widths = (torch.zeros(n, n_logs, len(settings.width_distances) + 1, 2)
              if settings.get_widths else None)
    scores_over_path = torch.full((n, n_logs, len(layers)), float("nan")) if layers else None
    final_scores = torch.full((n, len(layers)), float("nan")) if layers else None
    accepted_steps = torch.zeros(n, device=device)
    passes = torch.zeros(n, device=device)
    final = x_src.clone()
    final_confs = init_confs.clone()
    distance_left = torch.full((n,), float("nan"), device=device)
    fractions = torch.tensor(settings.matched_fractions, device=device)
    n_matched = len(fractions)
    matched_images = (torch.zeros(n, n_matched, *sources.shape[1:], device=device)
                      if n_matched else None)
    matched_iters = torch.full((n, n_matched), -1, dtype=torch.int64, device=device)
    matched_confs = torch.full((n, n_matched), float("nan"), device=device)
    push_apart = settings.diversity > 0 and groups is not None

    idx = kept.nonzero().squeeze(1)
    precision = settings.precision
    adaptive = settings.schedule == "adaptive"
    if len(idx) > 0:
        xs, xt, yk, p0 = x_src[idx], x_tgt[idx], y[idx], init_confs[idx]
        yt = y_tgt[idx] if y_tgt is not None else yk
        if precision != "fp32":  # the acceptance test compares confidences of one arithmetic
            p0 = probabilities(model, xs, precision=precision).gather(1, yk.view(-1, 1)).squeeze(1)
        kept_ids = [ids[i] for i in idx.tolist()]
        noise = initial_noise(sources.shape[1:], settings.init_noise, settings.seed, kept_ids,
                              None if restarts is None else [restarts[i] for i in idx.tolist()]
                              ).to(device)
        x = (xs + noise).clamp(0, 1)
        adv = torch.zeros_like(x)
        probs, grad = _confidence_and_grad(model, x, yk, precision)
        conf = probs.gather(1, yk.view(-1, 1)).squeeze(1)
        passes[idx] = 1
        span = spans = (xt - xs).flatten(1).norm(dim=1)  # source-target distances (spans: all)
        stop_at = (torch.full((len(idx),), settings.stop_distance, device=device)
                   if stop_distances is None else stop_distances.to(device, torch.float32)[idx])
        step = torch.full((len(idx),), min(settings.step_size, settings.step_max), device=device)
        rows = idx.clone()  # each walking sample's row among the inputs
        window = settings.stall_steps if adaptive else 0
        history = torch.full((len(idx), window + 1), float("inf"), device=device)  # distance left
        eps = settings.adv_step_size
        if push_apart:  # every kept walk's latest iterate, stopped ones included
            group, current = groups.to(device), x_src.clone()
            current[idx] = x
        # the first iterates at the matched fractions, (B,F,C,H,W) (B,F) (B,F): walking samples
        m_images = torch.zeros(len(idx), n_matched, *x.shape[1:], device=device)
        m_iters = torch.full((len(idx), n_matched), -1, dtype=torch.int64, device=device)
        m_confs = torch.full((len(idx), n_matched), float("nan"), device=device)
        if n_matched:
            m_images, m_iters, m_confs = _record_matched(0, x, conf, xt, span, fractions,
                                                         m_images, m_iters, m_confs)
        # each walking sample's source and target representations, lists over layers of (B,D)
        # (every kept sample's, for the blind spots at the end: `kept_reference`)
        reference = kept_reference = ([representations(model, t, layers) for t in (xs, xt)]
                                      if layers else None)
        for i in progress_bar(range(settings.iters), desc="LST", disable=not progress,
                              leave=False):
            if adaptive:  # samples near their target, out of step size or stalled leave the batch
                left = _distance_left(x, xt, span)
                stop = (left <= stop_at) | (step < settings.step_min)
                if window:  # history[:, k]: the distance left k steps ago
                    history = torch.cat([left.view(-1, 1), history[:, :-1]], dim=1)
                    stop |= history[:, -1] - left < settings.stall_tolerance * history[:, -1]
                if stop.any():
                    final[rows[stop]], final_confs[rows[stop]] = x[stop], conf[stop]
                    stopped_scores = None
                    if layers:
                        stopped_scores = scores_from(representations(model, x[stop], layers),
                                                     *[[r[stop] for r in ref] for ref in reference])
                        reference = [[r[~stop] for r in ref] for ref in reference]
                    if n_matched:
                        matched_images[rows[stop]] = m_images[stop]
                        matched_iters[rows[stop]] = m_iters[stop]
                        matched_confs[rows[stop]] = m_confs[stop]
                    _record_until_the_end(rows[stop].cpu(), i, settings.log_step, x[stop],
                                          conf[stop], probs[stop].gather(1, yt[stop].view(-1, 1)),
                                          left[stop],
                                          confs_over_path, distance_over_path, images_over_path,
                                          widths, stopped_scores, scores_over_path)
                    walking = ~stop
                    (x, xt, yk, yt, p0, adv, probs, grad, conf, step, span, stop_at, history,
                     rows, m_images, m_iters, m_confs) = (
                        t[walking] for t in (x, xt, yk, yt, p0, adv, probs, grad, conf, step,
                                             span, stop_at, history, rows, m_images, m_iters,
                                             m_confs))
                    if len(rows) == 0:
                        break
            d_perp = orthogonal_step(grad, xt - x)
            if i % settings.log_step == 0 and n_logs:
                r, rows_cpu = i // settings.log_step, rows.cpu()
                if confs_over_path is not None:
                    confs_over_path[rows_cpu, r, 0] = conf.cpu()
                    confs_over_path[rows_cpu, r, 1] = probs.gather(
                        1, yt.view(-1, 1)).squeeze(1).cpu()
                    distance_over_path[rows_cpu, r] = _distance_left(x, xt, span).cpu()
                if images_over_path is not None:
                    images_over_path[rows_cpu, r] = (x * 255).round().to(torch.uint8).cpu()
                if layers:
                    scores_over_path[rows_cpu, r] = scores_from(
                        representations(model, x, layers), *reference).cpu()
                if widths is not None:
                    widths[rows_cpu, r] = path_widths(
                        model, x, d_perp, yk, settings.width_distances,
                        num_directions=settings.width_directions, seed=settings.seed,
                        sample_ids=[ids[k] for k in rows_cpu.tolist()], stream=f"widths/{r}",
                        precision=precision)
            if eps is not None:
                adv = (adv + (eps / 2) * grad).clamp(-eps, eps)
            direction = d_perp
            if push_apart:
                push = diversity_push(x, current[idx], group[rows], group[idx], rows, idx)
                direction = d_perp + (settings.diversity * span).view(-1, 1, 1, 1) * \
                    orthogonal_step(grad, push)
            if adaptive:
                move = step.view(-1, 1, 1, 1) * direction
                if settings.corrector:
                    move = move + newton_correction(grad, conf, p0, move)
            else:
                move = settings.step_size * direction
            proposal = (x + move - adv).clamp(0, 1)
            new_probs, new_grad = _confidence_and_grad(model, proposal, yk, precision)
            new_conf = new_probs.gather(1, yk.view(-1, 1)).squeeze(1)
            accept = (p0 - new_conf) < settings.pthresh
            accepted_steps[rows] += accept.float()
            passes[rows] += 1
            a4 = accept.view(-1, 1, 1, 1)
            x = torch.where(a4, proposal, x)
            grad = torch.where(a4, new_grad, grad)
            probs = torch.where(accept.view(-1, 1), new_probs, probs)
            conf = torch.where(accept, new_conf, conf)
            if push_apart:
                current[rows] = x
            if n_matched:
                m_images, m_iters, m_confs = _record_matched(i + 1, x, conf, xt, span, fractions,
                                                             m_images, m_iters, m_confs)
            if adaptive:
                step = torch.where(accept, (step * settings.step_grow).clamp(max=settings.step_max),
                                   step * settings.step_shrink)
        final[rows], final_confs[rows] = x.detach(), conf
        if n_matched:
            matched_images[rows], matched_iters[rows], matched_confs[rows] = m_images, m_iters, m_confs
        distance_left[idx] = _distance_left(final[idx], x_tgt[idx], spans)
        if precision != "fp32":  # the blind spots' confidences in float32, whatever the walk used
            final_confs[idx] = class_confidence_of(model, final[idx], y[idx])
        if layers:
            final_scores[idx.cpu()] = scores_from(representations(model, final[idx], layers),
                                                  *kept_reference).cpu()
    return LSTResult(
        final_images=final.to(sources.device),
        kept=kept.cpu(),
        init_confs=init_confs.detach().cpu(),
        final_confs=final_confs.cpu(),
        accept_rate=(accepted_steps / (passes - 1).clamp(min=1)).cpu(),
        log_iters=log_iters[:n_logs] if n_logs else log_iters[:0],
        confs_over_path=confs_over_path,
        distance_over_path=distance_over_path,
        images_over_path=images_over_path,
        widths=widths,
        passes=passes.to(torch.int64).cpu(),
        distance_left=distance_left.cpu(),
        matched_images=None if matched_images is None else matched_images.to(sources.device),
        matched_iters=matched_iters.cpu() if n_matched else None,
        matched_confs=matched_confs.cpu() if n_matched else None,
        layer_scores=final_scores,
        layer_scores_over_path=scores_over_path,
    )


def _record_matched(iteration: int, x: torch.Tensor, conf: torch.Tensor, targets: torch.Tensor,
                    span: torch.Tensor, fractions: torch.Tensor, images: torch.Tensor,
                    iters: torch.Tensor, confs: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep x as the matched iterate of every fraction it reaches first at this iteration.
    x, targets: (B,C,H,W); conf, span: (B,); fractions: (F,); images (B,F,C,H,W), iters and
    confs (B,F), as recorded so far; returns them updated. No host synchronisation."""
    progress = 1 - _distance_left(x, targets, span)
    first = (progress.view(-1, 1) >= fractions.view(1, -1)) & (iters < 0)  # (B,F)
    images = torch.where(first.view(*first.shape, 1, 1, 1), x.unsqueeze(1), images)
    iters = torch.where(first, torch.full_like(iters, iteration), iters)
    confs = torch.where(first, conf.view(-1, 1), confs)
    return images, iters, confs


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


def _distance_left(x: torch.Tensor, targets: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """|x - x_t| / |x_s - x_t| per sample ((N,C,H,W), (N,C,H,W), (N,) -> (N,)); 0 where the
    source is its target."""
    left = (targets - x).flatten(1).norm(dim=1)
    return torch.where(span > 0, left / span.clamp_min(1e-30), torch.zeros_like(left))


def newton_correction(grad: torch.Tensor, conf: torch.Tensor, p0: torch.Tensor,
                      move: torch.Tensor) -> torch.Tensor:
    """The corrector of a level-set continuation, with the gradient at hand: a Newton step
    (p0 - p) g_p / |g_p|^2 back up to p0, where g_p = -p grad is the gradient of the source-class
    confidence p (grad: of the cross-entropy). Only below p0 (above, the walk is already safe),
    and never longer than the step `move` it is added to. All (N,C,H,W) but conf, p0 (N,);
    returns (N,C,H,W) float32.
    """
    g_p = -(conf.view(-1, 1, 1, 1) * grad)
    norm2 = g_p.flatten(1).pow(2).sum(dim=1).clamp_min(1e-30)
    gap = (p0 - conf).clamp(min=0)
    correction = (gap / norm2).view(-1, 1, 1, 1) * g_p
    length = correction.flatten(1).norm(dim=1)
    cap = move.flatten(1).norm(dim=1)
    scale = torch.where(length > cap, cap / length.clamp_min(1e-30), torch.ones_like(length))
    return correction * scale.view(-1, 1, 1, 1)


def _record_until_the_end(rows: torch.Tensor, i: int, log_step: int, x: torch.Tensor,
                          conf: torch.Tensor, target_conf: torch.Tensor, left: torch.Tensor,
                          confs_over_path: torch.Tensor | None,
                          distance_over_path: torch.Tensor | None,
                          images_over_path: torch.Tensor | None,
                          widths: torch.Tensor | None,
                          scores: torch.Tensor | None = None,
                          scores_over_path: torch.Tensor | None = None) -> None:
    """A sample that stopped at iteration i stays where it is: its recordings from i on hold its
    last iterate (confidences, distance left, image, layer `scores` (B,L)); its path widths
    there are NaN (not measured)."""
    first = -(-i // log_step)  # the first recording at or after iteration i
    if confs_over_path is not None and first < confs_over_path.shape[1]:
        confs_over_path[rows, first:, 0] = conf.cpu().view(-1, 1)
        confs_over_path[rows, first:, 1] = target_conf.cpu().view(-1, 1)
        distance_over_path[rows, first:] = left.cpu().view(-1, 1)
    if images_over_path is not None and first < images_over_path.shape[1]:
        images_over_path[rows, first:] = (x * 255).round().to(torch.uint8).cpu().unsqueeze(1)
    if widths is not None:
        widths[rows, first:] = float("nan")
    if scores_over_path is not None:
        scores_over_path[rows, first:] = scores.cpu().unsqueeze(1)


