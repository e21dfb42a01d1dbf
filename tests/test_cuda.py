"""The same computations on a CUDA device (skipped where there is none; benchmarks/gpu_check.sh
runs these on a GPU)."""
import numpy as np
import pytest
import torch

import lst
from tests.conftest import small_cnn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def inputs(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g)


@cuda
@pytest.mark.kernels
def test_lst_on_cuda_matches_the_cpu_in_fp32():
    model = small_cnn(gain=100.0)
    x, t = inputs()
    y = lst.predict(model, x)[0]
    kwargs = dict(iters=20, step_size=0.1, adv_step_size=0.01, pthresh=0.2)
    on_cpu = lst.level_set_traversal(model, x, y, t, **kwargs)
    on_gpu = lst.level_set_traversal(model.to("cuda"), x.cuda(), y.cuda(), t.cuda(), **kwargs)
    assert on_gpu.final_images.device.type == "cuda"
    torch.testing.assert_close(on_gpu.final_confs, on_cpu.final_confs, atol=1e-3, rtol=0)
    torch.testing.assert_close(on_gpu.final_images.cpu(), on_cpu.final_images, atol=1e-3, rtol=0)


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.kernels
def test_mixed_precision_on_cuda_stays_close_to_fp32(precision):
    model = small_cnn(gain=10.0).to("cuda")
    x, t = (v.cuda() for v in inputs(16))
    y = lst.predict(model, x)[0]
    kwargs = dict(iters=20, step_size=0.05, pthresh=0.2, get_widths=True, log_step=10,
                  width_distances=(0.5,), width_directions=8)
    exact = lst.level_set_traversal(model, x, y, t, **kwargs)
    fast = lst.level_set_traversal(model, x, y, t, precision=precision, **kwargs)
    assert np.abs(exact.final_confs.numpy() - fast.final_confs.numpy()).mean() < 0.05
    assert (exact.init_confs == fast.init_confs).all()  # p0 is float32 in both
    assert torch.isfinite(fast.widths).all()


@cuda
@pytest.mark.kernels
def test_full_eval_command_on_cuda(tmp_path):
    import level_set_traversal as cli

    argv = ["smallcnn-linf", "shapes", "--full_eval", "--num_samples", "20", "--rounds", "2",
            "--iters", "20", "--get_final_imgs", "--device", "cuda", "--precision", "bf16",
            "--out_dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert len(list(tmp_path.glob("*_fulleval_dict.pkl"))) == 1
