"""Small models and images the tests build themselves (no downloads, CPU only), and the
command line as the tests run it."""
import io
import logging
import os
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

warnings.filterwarnings("ignore", category=FutureWarning)


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def small_cnn(seed: int = 0, num_classes: int = 10, gain: float = 1.0) -> nn.Module:
    """A random small CNN on 3x16x16 images; `gain` sharpens its softmax."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, num_classes))
    with torch.no_grad():
        model[-1].weight.mul_(gain)
    return frozen(model)


def linear_classifier(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """logits = W flatten(x) + b, with W (K, C*H*W)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return frozen(nn.Sequential(nn.Flatten(), layer))


@pytest.fixture
def cnn():
    return small_cnn(gain=100.0)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 16, 16, generator=g), torch.rand(8, 3, 16, 16, generator=g)


def stem_for(argv):
    """The results-file stem (with its run id) the command line gives these arguments."""
    import level_set_traversal as cli
    from lst.identity import run_stem

    args = cli.parse_args(list(argv))
    settings = cli.check_args(args)
    return run_stem(cli.run_identity(args, settings), args.desc)


# Runs of one walk in two arithmetics (batch sizes, processes, kernels, a literal loop) differ by
# float32 rounding, about 1e-6 in a confidence. An acceptance decision closer than this to the
# threshold p0 - pthresh may go either way, and then the walks part for good; one farther away
# cannot change. Tests that compare such runs check that their walks keep this margin.
ROUNDING_MARGIN = 1e-4


def acceptance_margin(result, pthresh: float) -> float:
    """The smallest distance to the threshold of a run's acceptance decisions, for walks that
    accepted every step (asserted) and recorded every iterate (log_step 1): min over walks and
    steps of pthresh - (p0 - p), p each accepted iterate's confidence (the walk's own arrays).

    result: an LSTResult or a results dict (numpy) with init_confs, final_confs, accept_rate,
    log_iters and confs_over_path; any leading shape (N,) or (N,R).
    """
    def get(name):
        value = result[name] if isinstance(result, dict) else getattr(result, name)
        return np.asarray(value)

    assert (get("accept_rate") == 1).all(), "the margin is defined for walks that accept every step"
    assert np.array_equal(get("log_iters"), np.arange(len(get("log_iters")))), "needs log_step 1"
    after_each_step = np.concatenate([get("confs_over_path")[..., 1:, 0],
                                      get("final_confs")[..., None]], axis=-1)
    return float((pthresh - (get("init_confs")[..., None] - after_each_step)).min())


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv, cwd=None, env=None, process: bool = False, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """`python level_set_traversal.py ARGV` run in folder `cwd` (default: here) with `env` added
    to the environment (and HF_HUB_OFFLINE=1); returns its exit code, stdout and stderr.

    By default in this process: `main(argv)` with sys.stdout and sys.stderr captured (an
    argparse exit becomes its code), which costs no interpreter start and no imports. With
    `process`, a real `python` process, for what needs one: signals, a second run beside this
    one, environment read at import time (HF_HOME), the interpreter's own output."""
    argv = [str(a) for a in argv]
    extra = {"HF_HUB_OFFLINE": "1", **(env or {})}
    if process:
        return subprocess.run([sys.executable, str(ROOT / "level_set_traversal.py"), *argv],
                              cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **extra})
    import level_set_traversal as cli

    out, err, here, saved = io.StringIO(), io.StringIO(), os.getcwd(), dict(os.environ)
    # main's logging.basicConfig does nothing under pytest (its handlers are there first): log
    # to the captured stderr as a process would, INFO unless --quiet
    handler, root = logging.StreamHandler(err), logging.getLogger()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.WARNING if "--quiet" in argv else logging.INFO)
    level, threads = root.level, torch.get_num_threads()
    os.environ.update(extra)
    if "OMP_NUM_THREADS" in extra:  # read at start-up by a process; set here for this call
        torch.set_num_threads(int(extra["OMP_NUM_THREADS"]))
    try:
        os.chdir(cwd or here)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        torch.set_num_threads(threads)
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
