"""benchmarks/paper_code_check.py: this tool against the authors' code from a local clone.

The authors' repository cannot be fetched here: a real clone is used where LST_PAPER_REPO names
one (checked out at 76b1cfa), and otherwise a stand-in repository that the test writes takes its
place: modules of the same names and signatures, importing what the authors' modules import,
whose walk draws its noise from torch.rand_like. The stand-in walks with this tool's engine, so
the check must find no gap on it; the script's path (loading, stand-in imports, the noise
hand-over, the comparison) is the same as with the real clone.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAND_IN_WALK = '''
import torch
import torch.nn.functional as F
import lpips
import robustness
from robustbench import load_model
from eval_utils import *

lpips_alex = lpips.LPIPS(net="alex").to(device)


def batch_level_set_traversal(model, normalizer, dataset, source_classes, target_image,
                              target_class, stepsize, iterations, device, pthresh=0.05, inp=None,
                              get_widths=False, get_confs_over_path=False, get_images=False,
                              get_final_imgs=False, log_step=10, dfunc_list=[]):
    """The paper's section 3 written out: forward+backward at x, a forward at the proposal."""
    def probs(x):
        return torch.softmax(model(normalizer(x)), dim=1)

    rows = torch.arange(len(dataset))
    p0 = probs(dataset)[rows, source_classes].detach()
    x = (dataset + (4 / 255) * (torch.rand_like(dataset) - 0.5)).clamp(0, 1)
    adv, path = torch.zeros_like(x), []
    for i in range(iterations):
        x = x.detach().requires_grad_(True)
        logits = model(normalizer(x))
        path.append(torch.softmax(logits, 1)[rows, source_classes].detach())
        g, = torch.autograd.grad(F.cross_entropy(logits, source_classes, reduction="sum"), x)
        v = (target_image - x).flatten(1)
        j = g.flatten(1)
        step = (v - j * (j * v).sum(1, keepdim=True) / (j * j).sum(1, keepdim=True)).view_as(x)
        adv = (adv + args.adv_step_size / 2 * g).clamp(-args.adv_step_size, args.adv_step_size)
        proposal = (x + stepsize * step - adv).clamp(0, 1).detach()
        accept = (p0 - probs(proposal)[rows, source_classes].detach()) < pthresh
        x = torch.where(accept.view(-1, 1, 1, 1), proposal, x.detach())
    return {"final_images": x, "confs_over_path": torch.stack(path, dim=1)}
'''

STAND_IN_EVAL = '''
import torch
from pytorch_grad_cam import GradCAM
from lst.hull import hull_confidences, hull_stats, paper_grid_points

device = torch.device("cpu")


def get_avg_conf(model, normalizer, imgs, source_class, num_interps=10):
    confs = hull_confidences(model, *[i.unsqueeze(0) for i in imgs], torch.tensor([source_class]))
    s = {k: float(v[0]) for k, v in hull_stats(confs, points=paper_grid_points()).items()}
    return (s["p_src"], s["mean"], [s[f"frac_above_{d}"] for d in ("0", "0.1", "0.2", "0.3")],
            s["edge_min"], s["edge_mean"])
'''


def check_module():
    spec = importlib.util.spec_from_file_location("paper_code_check",
                                                  ROOT / "benchmarks" / "paper_code_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_clone_it_says_so_in_one_line(capsys):
    assert check_module().main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["paper_code_check: skipped, no --paper_repo (a local clone of the authors' code)"]


def test_a_folder_without_the_authors_code_is_one_line(tmp_path, capsys):
    assert check_module().main(["--paper_repo", str(tmp_path)]) == 2
    assert "holds no level_set_traversal.py" in capsys.readouterr().err


def stand_in_repo(folder: Path) -> Path:
    (folder / "level_set_traversal.py").write_text(STAND_IN_WALK)
    (folder / "eval_utils.py").write_text(STAND_IN_EVAL)
    return folder


@pytest.fixture
def paper_repo(tmp_path):
    """A clone of the authors' repository where LST_PAPER_REPO names one, else the stand-in."""
    clone = os.environ.get("LST_PAPER_REPO")
    return Path(clone) if clone else stand_in_repo(tmp_path)


def test_the_walks_and_triangles_agree_with_the_code_in_the_clone(paper_repo, capsys):
    module = check_module()
    before = set(sys.modules)
    try:
        assert module.main(["--paper_repo", str(paper_repo), "--pairs", "6", "--iters", "30"]) == 0
    finally:
        for name in set(sys.modules) - before:  # the stand-in imports and the loaded modules
            sys.modules.pop(name)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("smallcnn-normal")).split()
    left, conf_gap, _, image_gap, _, _, ulp_gap, table2_gap, fraction_gap = map(float, row[3:])
    assert 0 < left < 0.9  # the walks moved
    assert 0 < ulp_gap < 1e-4  # one ulp moves the walk, by rounding's scale in 30 steps
    assert conf_gap < 1e-5 and image_gap < 1e-5 and table2_gap < 1e-5 and fraction_gap == 0
