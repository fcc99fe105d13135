"""Masks against brute-force evaluations of their definitions, and pattern parsing."""

import pytest
import torch

from core.errors import UserError
from core.patterns import Pattern, follows_pattern, parse_pattern, sparsity_of
from core.pruning.masks import nm_mask, per_layer_mask, per_row_mask
from tests.reference import brute_nm, brute_per_layer, brute_per_row


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_per_row_mask_drops_the_k_lowest_of_every_row(sparsity):
    scores = torch.rand(7, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(per_row_mask(scores, sparsity), brute_per_row(scores, sparsity))


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.77])
def test_per_layer_mask_drops_the_k_lowest_of_the_layer(sparsity):
    scores = torch.rand(9, 24, generator=torch.Generator().manual_seed(2))
    mask = per_layer_mask(scores, sparsity)
    assert torch.equal(mask, brute_per_layer(scores, sparsity))
    assert int(mask.sum()) == int(scores.numel() * sparsity)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8), (1, 2)])
def test_nm_mask_prunes_the_m_minus_n_lowest_of_every_group(n, m):
    scores = torch.rand(6, 32, generator=torch.Generator().manual_seed(3))
    mask = nm_mask(scores, Pattern(n, m))
    assert torch.equal(mask, brute_nm(scores, n, m))
    assert (mask.view(6, -1, m).sum(-1) == m - n).all()


def test_follows_pattern_counts_nonzeros_per_group():
    w = torch.ones(2, 8)
    w[:, [0, 1, 4, 5]] = 0
    assert follows_pattern(w, Pattern(2, 4))
    w[1, 0] = 3.0                       # a third non-zero in row 1, first group
    assert not follows_pattern(w, Pattern(2, 4))
    assert not follows_pattern(torch.ones(2, 6), Pattern(2, 4))   # 6 columns do not form groups of 4
    assert sparsity_of(w) == pytest.approx(7 / 16)


def test_parse_pattern():
    assert parse_pattern("unstructured") == Pattern()
    assert parse_pattern(" 2:4 ") == Pattern(2, 4)
    assert parse_pattern("4:8").sparsity == 0.5
    assert parse_pattern("1:4").sparsity == 0.75
    assert str(parse_pattern("3:8")) == "3:8"
    for bad in ("4:4", "5:4", "0:4", "2-4", "half"):
        with pytest.raises(UserError):
            parse_pattern(bad)
