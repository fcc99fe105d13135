"""GPTQ against the paper's own statement of it, and against round-to-nearest on the error it minimises."""

import pytest
import torch

from core.pruning.methods.sparsegpt import factor
from core.pruning.stats import LayerStats
from core.quantization.gptq import gptq
from core.quantization.grid import Grid
from core.quantization.rtn import round_to_nearest
from tests.reference import gptq_textbook


def correlated_inputs(tokens=512, dim=64, seed=0):
    torch.manual_seed(seed)
    mixing = torch.randn(dim, dim) / dim ** 0.5 + torch.eye(dim)
    scales = torch.logspace(-1, 1, dim)
    return (torch.randn(tokens, dim) @ mixing) * scales


def stats_of(x):
    return LayerStats(tokens=x.shape[0], xtx=x.t() @ x)


def output_error(w, w_hat, x):
    return float(((w - w_hat) @ x.t()).pow(2).sum() / (w @ x.t()).pow(2).sum())


def run_gptq(w, stats, grid, group, **kwargs):
    order = kwargs.pop("order", None)
    U, dead, _, _ = factor(stats, w.device, 0.01, 1.0, order)
    return gptq(w, U, dead, grid, group, order=order, **kwargs)


CASES = [(4, True, 16, True), (4, False, 64, True), (8, True, 32, True), (4, False, 16, False), (8, False, 64, False)]


@pytest.mark.parametrize("bits,symmetric,group,static", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_gptq_equals_the_textbook_sweep(bits, symmetric, group, static, masked):
    """In float64. Scales fitted during the sweep are compared on asymmetric grids only: on a symmetric one
    the group's largest weight sits exactly half a step past the last level (max/7.5), where one ulp decides
    the rounding and a flip then propagates. Static scales (fitted before the sweep: the identity column
    order) test the symmetric sweep itself."""
    x = correlated_inputs().double()
    torch.manual_seed(2)
    w = torch.randn(24, 64, dtype=torch.float64)
    pruned = (torch.rand(24, 64) < 0.5) if masked else None
    if masked:
        w[pruned] = 0
    grid = Grid(bits, symmetric, torch.float64)
    H = 2 * x.t() @ x / x.shape[0]
    damped = H + 0.01 * H.diagonal().mean() * torch.eye(64, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    order = torch.arange(64) if static else None
    ours, _ = gptq(w, U, torch.zeros(64, dtype=torch.bool), grid, group, pruned=pruned, blocksize=16, order=order)
    reference = gptq_textbook(w, H, grid, group, pruned, static=static)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-9)
    if masked:
        assert (ours[pruned] == 0).all()


@pytest.mark.parametrize("bits,group", [(4, 16), (4, 64), (8, 64)])
def test_gptq_beats_round_to_nearest_on_the_output_error(bits, group):
    x = correlated_inputs(seed=3)
    torch.manual_seed(3)
    w = torch.randn(32, 64)
    grid = Grid(bits, True)
    ours, _ = run_gptq(w, stats_of(x), grid, group)
    rounded, _ = round_to_nearest(w, grid, group)
    assert output_error(w, ours, x) < 0.95 * output_error(w, rounded, x)


def test_activation_order_keeps_static_contiguous_groups_and_the_mask():
    x = correlated_inputs(seed=4)
    torch.manual_seed(4)
    w = torch.randn(16, 64)
    pruned = torch.rand(16, 64) < 0.5
    w[pruned] = 0
    stats = stats_of(x)
    order = torch.argsort(stats.xtx.diagonal(), descending=True)
    ours, record = run_gptq(w, stats, Grid(4, True), 16, pruned=pruned, order=order)
    assert (ours[pruned] == 0).all()
    codes = record.codes(ours)
    assert torch.equal(record.dequantize(codes), ours)        # every weight on its natural group's grid
    plain, _ = run_gptq(w, stats_of(x), Grid(4, True), 16, pruned=pruned)
    rounded, _ = round_to_nearest(w, Grid(4, True), 16, pruned)
    assert output_error(w, ours, x) < output_error(w, rounded, x)
    assert output_error(w, plain, x) < output_error(w, rounded, x)


def test_lazy_batches_do_not_change_the_result():
    x = correlated_inputs(seed=5)
    torch.manual_seed(5)
    w = torch.randn(16, 64)
    one, _ = run_gptq(w, stats_of(x), Grid(4, True), 32, blocksize=1)
    many, _ = run_gptq(w, stats_of(x), Grid(4, True), 32, blocksize=64)
    assert (one != many).float().mean() < 0.01


def test_dead_inputs_are_zeroed():
    x = correlated_inputs(seed=6)
    x[:, 5] = 0
    torch.manual_seed(6)
    w = torch.randn(8, 64)
    ours, _ = run_gptq(w, stats_of(x), Grid(4, True), 32)
    assert (ours[:, 5] == 0).all()
