"""A recorder is one class: the engine calls it at fixed points without being edited."""
import torch

import lst
from lst.recorders import Recorder
from tests.conftest import small_cnn


class ConfidenceTrace(Recorder):
    """A toy recorder: each walk's source-class confidence at every iterate, and where it stopped."""

    def __init__(self, n: int, iters: int) -> None:
        self.trace = torch.full((n, iters + 1), float("nan"))
        self.stopped_at = torch.full((n,), -1)
        self.finished = False

    def before_step(self, state, i):
        self.trace[state.rows.cpu(), i] = state.conf.cpu()

    def stopped(self, state, stop, i):
        rows = state.rows[stop].cpu()
        self.trace[rows, i] = state.conf[stop].cpu()
        self.stopped_at[rows] = i

    def finish(self, fields):
        self.finished = "final_images" in fields  # the blind spots are filled in before


def test_a_new_recorder_sees_every_iterate_and_every_stop():
    model = small_cnn(gain=30.0)
    g = torch.Generator().manual_seed(3)
    sources, targets = torch.rand(6, 3, 16, 16, generator=g), torch.rand(6, 3, 16, 16, generator=g)
    labels = lst.predict(model, sources)[0]
    labels[0] = (labels[0] + 1) % 10  # a skipped source
    iters = 30
    trace = ConfidenceTrace(len(sources), iters)
    result = lst.level_set_traversal(model, sources, labels, targets, recorders=[trace],
                                     step_size=0.2, iters=iters, pthresh=0.002, log_step=1,
                                     schedule="adaptive", stall_steps=0, get_confs_over_path=True)
    kept = result.kept
    assert trace.finished and not kept[0] and (trace.stopped_at[0] == -1)
    assert (trace.stopped_at[kept] + 1 == result.passes[kept]).all()  # stopped after passes - 1 steps
    assert (trace.stopped_at[kept] < iters).any(), "some walk should stop early"
    for row in kept.nonzero().flatten().tolist():
        end = int(trace.stopped_at[row])
        assert trace.trace[row, end] == result.final_confs[row]
        assert torch.equal(trace.trace[row, :min(end, iters)],
                           result.confs_over_path[row, :min(end, iters), 0])
