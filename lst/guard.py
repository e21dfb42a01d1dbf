"""The level-set guarantee in reduced precision: every blind spot passes p0 - p < delta in float32.

A walk in bf16 or fp16 decides each step with its own arithmetic's confidences (less
`LSTSettings.acceptance_margin`, 0 by default). Their rounding can let a walk's last iterate out
of the level set as float32 sees it. `Float32Check` closes that gap by
construction, without walking again:

- while the walks go, it keeps each walk's HISTORY latest accepted iterates before its current
  one (state.extra["previous"], (B,HISTORY,C,H,W), newest first; the clean source fills what the
  walk has not accepted yet);
- when walks stop (`verify`), their iterates are evaluated once in float32 (the pass that
  reports the blind spots' float32 confidences anyway), against p0 in float32 at the clean source;
- a walk whose iterate fails is stepped back to the newest of its kept iterates that passes, or
  to its clean source (p = p0: in the level set by definition) where none does.

With `quantize` (8-bit blind spots, what full_eval --get_final_imgs stores and measures) the
check is made, in any precision, on each candidate rounded to a multiple of 1/255, and the
blind spot is that rounded image, so its 8-bit copy is in the level set too (a rounded clean
source that fails, which would take a source whose confidence half a grey level moves by
delta, leaves the clean source itself).

docs/design.md, "Reduced precision".
"""
from __future__ import annotations

import torch
from torch import nn

from .confidence import probabilities
from .recorders import Recorder
from .walk import WalkState

HISTORY = 2  # iterates kept per walk to step back to (benchmarks/README.md: one was enough)


class Float32Check(Recorder):
    """Keeps the iterates to step back to, and checks each walk once in float32 as it stops.

    sources: (N,C,H,W) float32 in [0,1] on the model's device; init_confs: (N,) float32 p0 at the
    clean sources (float32, the guarantee's p0); pthresh: delta; quantize: check and return the
    candidates rounded to multiples of 1/255 (`as_stored`). Fills stepped_back (N,) int64:
    how many of its latest iterates the check refused before one passed (0: the walk's last
    iterate is its blind spot; HISTORY + 1: the blind spot is the clean source).
    """

    def __init__(self, model: nn.Module, sources: torch.Tensor, init_confs: torch.Tensor,
                 pthresh: float, quantize: bool = False) -> None:
        self.model, self.sources, self.init_confs, self.pthresh = model, sources, init_confs, pthresh
        self.quantize = quantize
        self.stepped_back = torch.zeros(len(sources), dtype=torch.int64)
        self.before: torch.Tensor | None = None  # the walks' iterates before the step in flight

    def start(self, state: WalkState) -> None:
        state.extra["previous"] = self.sources[state.rows].unsqueeze(1).repeat(
            1, HISTORY, *([1] * (state.x.dim() - 1)))

    def before_step(self, state: WalkState, i: int) -> None:
        self.before = state.x

    def after_step(self, state: WalkState, i: int, accept: torch.Tensor) -> None:
        previous = state.extra["previous"]
        shifted = torch.cat([self.before.unsqueeze(1), previous[:, :-1]], dim=1)
        state.extra["previous"] = torch.where(accept.view(-1, *([1] * (previous.dim() - 1))),
                                              shifted, previous)

    def as_stored(self, images: torch.Tensor) -> torch.Tensor:
        """The images as a blind spot is returned: rounded to multiples of 1/255 with quantize,
        unchanged otherwise."""
        return (images * 255).round() / 255 if self.quantize else images

    def passes(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each image is in its walk's level set in float32, and its float32 softmax:
        images (M,C,H,W), labels (M,), rows (M,) the walks' rows among the inputs -> (M,) bool,
        (M,K) float32."""
        probs = probabilities(self.model, images)
        conf = probs.gather(1, labels.view(-1, 1)).squeeze(1)
        return (self.init_confs[rows] - conf) < self.pthresh, probs

    def verify(self, state: WalkState, stop: torch.Tensor) -> None:
        """The walks where stop ((B,) bool) is True, checked in float32: state.x and state.probs
        of each become its blind spot (its iterate, or the one it is stepped back to) and the
        float32 softmax there."""
        walks = stop.nonzero().squeeze(1)
        if len(walks) == 0:
            return
        x = self.as_stored(state.x[walks])
        ok, probs = self.passes(x, state.label[walks], state.rows[walks])
        failed = (~ok).nonzero().squeeze(1)
        if len(failed):
            back, back_probs, steps = self.step_back(state, walks[failed])
            x, probs = x.index_put((failed,), back), probs.index_put((failed,), back_probs)
            self.stepped_back[state.rows[walks[failed]].cpu()] = steps.cpu()
        state.x = state.x.index_put((walks,), x)
        state.probs = state.probs.index_put((walks,), probs)

    def step_back(self, state: WalkState, walks: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For walks (F,) whose iterate failed: the newest kept iterate that passes, else the
        clean source; returns images (F,C,H,W), float32 softmax (F,K), steps back (F,) int64."""
        kept = state.extra["previous"][walks]  # (F,HISTORY,C,H,W)
        rows, labels = state.rows[walks], state.label[walks]
        sources = self.sources[rows]
        candidates = self.as_stored(torch.cat([kept, sources.unsqueeze(1)], dim=1))
        n, k = candidates.shape[:2]
        ok, probs = self.passes(candidates.flatten(0, 1), labels.repeat_interleave(k),
                                rows.repeat_interleave(k))
        ok, probs = ok.view(n, k), probs.view(n, k, -1)
        pick = torch.arange(n, device=ok.device)
        first = ok.int().argmax(dim=1)  # the first (newest) that passes
        images, probs = candidates[pick, first], probs[pick, first]
        none = ~ok.any(dim=1)  # not even the (rounded) source: the clean source itself
        if none.any():
            images = torch.where(none.view(-1, *([1] * (images.dim() - 1))), sources, images)
            probs = torch.where(none.view(-1, 1), self.passes(sources, labels, rows)[1], probs)
        return images, probs, torch.where(none, k, first + 1)

    def finish(self, fields: dict) -> None:
        fields.update(stepped_back=self.stepped_back)
