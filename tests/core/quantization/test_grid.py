"""The integer grids against their definitions: nearest grid point, zero on the grid, the stored round trip."""

import pytest
import torch

from core.quantization.grid import Grid
from core.quantization.rtn import round_to_nearest
from core.quantization.scheme import QuantScheme
from core.errors import UserError


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rounding_picks_the_nearest_grid_point(bits, symmetric):
    torch.manual_seed(bits)
    grid = Grid(bits, symmetric)
    w = torch.randn(32, 64) + (0 if symmetric else 0.7)
    scale, zero = grid.fit(w)
    q = grid.quantize(w, scale, zero)
    levels = (torch.arange(grid.qmin, grid.qmax + 1).float().view(1, -1) - zero) * scale   # [rows, levels]
    nearest = levels.gather(1, (w.unsqueeze(2) - levels.unsqueeze(1)).abs().argmin(2))
    assert ((w - q).abs() <= (w - nearest).abs() + 1e-6).all()   # ties (the max at ±7.5 steps) either way
    codes = grid.codes(w, scale, zero)
    assert codes.min() >= grid.qmin and codes.max() <= grid.qmax
    assert (codes == grid.qmin).any() or (codes == grid.qmax).any()      # the range is used, not wasted


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_is_on_every_grid(symmetric):
    grid = Grid(4, symmetric)
    w = torch.rand(8, 32) + 0.5                       # all positive: an asymmetric grid still spans 0
    scale, zero = grid.fit(w)
    assert torch.equal(grid.quantize(torch.zeros(8, 1), scale, zero), torch.zeros(8, 1))


def test_a_group_of_zeros_gets_a_usable_scale():
    grid = Grid(4, True)
    scale, zero = grid.fit(torch.zeros(3, 16))
    assert torch.equal(scale, torch.ones(3, 1)) and torch.equal(grid.quantize(torch.zeros(3, 16), scale, zero),
                                                                torch.zeros(3, 16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_codes_come_back_exactly_from_the_stored_weight(dtype, bits, symmetric):
    torch.manual_seed(0)
    w = torch.randn(24, 128) * 0.05
    pruned = torch.rand(24, 128) < 0.5
    w[pruned] = 0
    quantized, record = round_to_nearest(w, Grid(bits, symmetric, dtype), 32, pruned)
    stored = quantized.to(dtype)
    assert torch.equal(record.dequantize(record.codes(stored)).to(dtype), stored)
    assert (stored[pruned] == 0).all()
    assert record.scale.dtype == dtype and record.scale.shape == (24, 4)
    assert (record.zero is None) == symmetric


def test_round_to_nearest_keeps_each_group_on_its_own_grid():
    torch.manual_seed(1)
    w = torch.randn(4, 64)
    w[:, 32:] *= 100                                   # the second group's scale must not touch the first's
    quantized, record = round_to_nearest(w, Grid(4, True), 32)
    for g in range(2):
        part = w[:, 32 * g: 32 * g + 32]
        scale = part.abs().amax(1, keepdim=True) / 7.5
        assert torch.allclose(record.scale[:, g:g + 1], scale)
        assert torch.allclose(quantized[:, 32 * g: 32 * g + 32], (part / scale).round().clamp(-8, 7) * scale)


def test_default_group_size_follows_the_input_dimension():
    scheme = QuantScheme(4)
    assert [scheme.group_for(n) for n in (4096, 576, 1536, 96, 100)] == [128, 64, 128, 32, 100]
    assert QuantScheme(4, group_size=0).group_for(576) == 576
    assert QuantScheme(4, group_size=128).group_for(576) is None
    assert QuantScheme(4, group_size=64).group_for(576) == 64


@pytest.mark.parametrize("kwargs", [dict(bits=3), dict(bits=16), dict(group_size=-1), dict(group_size=20),
                                    dict(method="awq"), dict(dampening=0), dict(joint=True, act_order=True),
                                    dict(method="rtn", act_order=True)])
def test_bad_schemes_are_refused(kwargs):
    with pytest.raises(UserError):
        QuantScheme(**kwargs).validate()
