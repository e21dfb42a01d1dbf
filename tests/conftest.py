"""Small models and images the tests build themselves (no downloads, CPU only)."""
import warnings

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
