"""The hyperparameters of Level Set Traversal (paper §3) and what to record along the path.

`LSTSettings` is their one home: defaults, help texts and range checks. The command line builds
one flag per field from it; results files and run keys store `as_dict()`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .precision import PRECISIONS, check_precision

PAPER_ADV_STEP_SIZE = 1 / 255  # eps when the adversarial term is switched on (--adv_pert) alone
SCHEDULES = ("fixed", "adaptive")
# The paper's hyperparameters (its ImageNet runs: eta, T, delta, eps of the adversarial term).
PAPER_HYPERPARAMETERS = dict(step_size=1e-2, iters=400, pthresh=0.2, adv_step_size=2e-3)
# Named sets of command-line defaults (--preset): paper, its Algorithm 1 as it ran it; fast, the
# same level set (the paper's delta and adversarial term) walked by the adaptive schedule in the
# fastest arithmetic the device has (--precision auto). Flags given explicitly win.
PRESETS = {"paper": dict(PAPER_HYPERPARAMETERS),
           "fast": dict(PAPER_HYPERPARAMETERS, schedule="adaptive", precision="auto")}
ADAPTIVE_FIELDS = ("step_start", "step_grow", "step_shrink", "step_max", "step_min",
                   "stop_distance", "stall_steps", "stall_tolerance", "corrector", "retry")


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
                "the blind spots' confidences are re-evaluated in fp32); on the command line "
                "also auto: bf16 where the CPU or GPU has instructions for it, else fp32 (the "
                "run key records the choice)",
        "choices": (*PRECISIONS, "auto")})
    acceptance_margin: float = field(default=0.0, metadata={
        "help": "m >= 0: a step is accepted only while p0 - p < delta - m. Under bf16/fp16 every "
                "blind spot is checked in float32 when its walk stops and stepped back to the "
                "walk's latest iterate that passes (docs/design.md, 'Reduced precision'); a "
                "margin as large as the arithmetic's rounding (lst.precision."
                "CONFIDENCE_ROUNDING: bf16 0.012, fp16 0.002) makes step backs rarer for more "
                "passes (the default 0: the check alone keeps the guarantee)"})
    quantize: bool = field(default=False, metadata={
        "help": "8-bit blind spots: each walk's blind spot (and matched iterate) is rounded to "
                "a multiple of 1/255 and checked in float32 as such, stepped back if it fails, "
                "so its 8-bit copy is the blind spot itself; full_eval --get_final_imgs, which "
                "stores and measures its images in 8 bits, turns it on"})
    schedule: str = field(default="fixed", metadata={
        "help": "fixed: every step moves step_size of the way (the paper's); adaptive: a step "
                "size per sample that grows after accepted steps and shrinks after rejected "
                "ones; a sample stops near its target, out of step size or stalled "
                "(docs/design.md, 'The step schedule')",
        "choices": SCHEDULES})
    step_start: float = field(default=0.25, metadata={
        "help": "adaptive: the first step size, a fraction of the way to the target (step_size "
                "is the fixed schedule's eta)"})
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
    stall_steps: int = field(default=3, metadata={
        "help": "adaptive: a sample also stops when its distance left has fallen by less than "
                "stall_tolerance (relative) over its last stall_steps accepted steps (0: never)"})
    stall_tolerance: float = field(default=0.05, metadata={
        "help": "adaptive: see stall_steps"})
    corrector: bool = field(default=False, metadata={
        "help": "adaptive: each step also moves along the gradient back towards p0 (a Newton "
                "step with the gradient at hand, no extra pass)"})
    retry: bool = field(default=True, metadata={
        "help": "adaptive: a refused step is tried once more, at the same size, its move "
                "corrected back into the level set with the gradient at the refused proposal "
                "(a Newton step to p0 - pthresh/2), before the step size shrinks; --no-retry "
                "turns it off"})
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
        if not (math.isfinite(self.step_start) and self.step_min <= self.step_start <= 1):
            raise ValueError(f"step_start must be in [step_min, 1], got {self.step_start} "
                             f"(step_min {self.step_min})")
        if not 0 <= self.acceptance_margin < self.pthresh:
            raise ValueError(f"acceptance_margin must be in [0, pthresh), got "
                             f"{self.acceptance_margin} (pthresh {self.pthresh})")
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
        Unless `complete`, fp32 without a margin leaves acceptance_margin out (a bf16/fp16 run
        names it: its blind spots are checked, `lst.guard`), the fixed schedule leaves out the
        schedule's fields, and diversity, matched_fractions, quantize, get_layers and layers are
        left out while off, so runs of the paper's algorithm keep the run ids they had before
        these settings existed."""
        values = dict(asdict(self), width_distances=list(self.width_distances),
                      matched_fractions=list(self.matched_fractions), layers=list(self.layers))
        if not complete:
            if self.precision == "fp32" and self.acceptance_margin == 0:
                values.pop("acceptance_margin")
            if self.schedule == "fixed":
                for name in ("schedule", *ADAPTIVE_FIELDS):
                    values.pop(name)
            for name, off in (("diversity", 0.0), ("matched_fractions", []), ("quantize", False),
                              ("get_layers", False), ("layers", [])):
                if values[name] == off:
                    values.pop(name)
        return values
