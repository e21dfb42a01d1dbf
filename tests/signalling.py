"""A model that interrupts its own process at a known call, so that fault tests interrupt a run
at a known point on any machine (never after a sleep or a poll).

    python level_set_traversal.py tests.signalling:smallcnn shapes --full_eval ...
    LST_TEST_SIGNAL=INT LST_TEST_SIGNAL_AT=100   # SIGINT on the 100th forward pass (KILL: SIGKILL)
"""
import os
import signal

from torch import nn

from models import load_model

CALLS = []  # the batch size of every forward pass, in order


class SignalsOnCall(nn.Module):
    """The shipped smallcnn-normal; on its LST_TEST_SIGNAL_AT-th forward pass it sends
    LST_TEST_SIGNAL (INT or KILL) to its own process. Without LST_TEST_SIGNAL_AT it never does."""

    def __init__(self) -> None:
        super().__init__()
        self.model, _ = load_model("smallcnn-normal", "shapes")
        self.at = int(os.environ.get("LST_TEST_SIGNAL_AT", "0"))
        self.signum = getattr(signal, "SIG" + os.environ.get("LST_TEST_SIGNAL", "INT"))

    def forward(self, x):
        CALLS.append(len(x))
        if len(CALLS) == self.at:
            os.kill(os.getpid(), self.signum)
        return self.model(x)


def smallcnn() -> nn.Module:
    return SignalsOnCall()
