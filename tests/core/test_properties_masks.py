"""Property-based tests of the masks: on random shapes, sparsities and N:M patterns, with ties (scores from a
tiny set, or all equal), every mask is exactly what its definition says. True means pruned."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from core.patterns import Pattern, follows_pattern, sparsity_of
from core.pruning.masks import block_mask, lowest_k, nm_mask, per_layer_mask, per_row_mask

MASKS = settings(max_examples=150, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

_ELEMENTS = st.one_of(
    st.floats(-1e4, 1e4, width=32),                      # distinct scores, mostly
    st.sampled_from([0.0, -0.0, 1.0, 2.0]),              # ties everywhere
    st.sampled_from([-np.inf, np.inf, 0.0]),
)


@st.composite
def scores(draw, rows=st.integers(1, 6), cols=st.integers(1, 24), nan=False):
    """A [rows, cols] score tensor of any dtype, sometimes all one value, sometimes not contiguous."""
    shape = (draw(rows), draw(cols))
    if draw(st.booleans()):
        values = arrays(np.float32, shape, elements=_ELEMENTS if not nan else st.one_of(_ELEMENTS, st.just(np.nan)))
        data = torch.from_numpy(draw(values))
    else:
        data = torch.full(shape, draw(st.sampled_from([0.0, 1.0, -3.5])))
    if draw(st.booleans()):                              # the transpose of a contiguous tensor
        data = data.T.contiguous().T
    return data.to(draw(st.sampled_from(DTYPES)))


def stable_lowest(s: torch.Tensor, k: int) -> torch.Tensor:
    """The definition: the k lowest of every row, equal scores taken left to right (a stable sort)."""
    order = torch.sort(s.float(), dim=-1, stable=True).indices[..., :k]
    return torch.zeros(s.shape, dtype=torch.bool).scatter_(-1, order, True)


def assert_pruned_below_kept(s: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> None:
    """Every pruned score is at most every kept score along `dim` (NaN ranks highest)."""
    s = s.float().nan_to_num(nan=np.inf, posinf=np.inf, neginf=-np.inf)
    highest_pruned = s.masked_fill(~mask, -np.inf).amax(dim)
    lowest_kept = s.masked_fill(mask, np.inf).amin(dim)
    assert bool((highest_pruned <= lowest_kept).all())


@MASKS
@given(scores(), st.integers(-3, 30))
def test_lowest_k_prunes_exactly_k_of_every_row_ties_left_to_right(s, k):
    mask = lowest_k(s, k)
    assert mask.dtype == torch.bool and mask.shape == s.shape
    assert bool((mask.sum(-1) == min(max(k, 0), s.shape[-1])).all())
    assert torch.equal(mask, stable_lowest(s, min(max(k, 0), s.shape[-1])))


@MASKS
@given(scores(nan=True), st.integers(0, 30))
def test_lowest_k_ranks_nan_highest_and_still_prunes_exactly_k(s, k):
    mask = lowest_k(s, k)
    assert bool((mask.sum(-1) == min(k, s.shape[-1])).all())
    assert_pruned_below_kept(s, mask)


@MASKS
@given(scores(), st.floats(0, 1, exclude_max=True))
def test_per_row_mask_prunes_int_in_times_sparsity_of_every_row(s, sparsity):
    mask = per_row_mask(s, sparsity)
    k = int(s.shape[1] * sparsity)
    assert mask.dtype == torch.bool and mask.shape == s.shape
    assert bool((mask.sum(1) == k).all())
    assert_pruned_below_kept(s, mask, dim=1)
    assert torch.equal(mask, stable_lowest(s, k))


@MASKS
@given(scores(), st.floats(0, 1, exclude_max=True))
def test_per_layer_mask_prunes_int_numel_times_sparsity_of_the_layer(s, sparsity):
    mask = per_layer_mask(s, sparsity)
    k = int(s.numel() * sparsity)
    assert mask.dtype == torch.bool and mask.shape == s.shape and int(mask.sum()) == k
    assert_pruned_below_kept(s.flatten(), mask.flatten())
    assert torch.equal(mask.flatten(), stable_lowest(s.flatten(), k))    # ties in row-major order


_PATTERNS = st.integers(2, 16).flatmap(lambda m: st.builds(Pattern, st.integers(1, m - 1), st.just(m)))


@st.composite
def nm_case(draw, nan=False):
    pattern = draw(_PATTERNS)
    return draw(scores(cols=st.integers(1, 4).map(lambda g: g * pattern.m), nan=nan)), pattern


@MASKS
@given(nm_case())
def test_nm_mask_prunes_m_minus_n_lowest_of_every_group(case):
    s, pattern = case
    mask = nm_mask(s, pattern)
    rows, cols = s.shape
    assert mask.dtype == torch.bool and mask.shape == s.shape
    groups = mask.reshape(rows, cols // pattern.m, pattern.m)
    assert bool((groups.sum(-1) == pattern.m - pattern.n).all())
    assert_pruned_below_kept(s.reshape(rows, cols // pattern.m, pattern.m), groups)
    weight = torch.ones(rows, cols).masked_fill(mask, 0)
    assert follows_pattern(weight, pattern) and abs(sparsity_of(weight) - pattern.sparsity) < 1e-9


@MASKS
@given(nm_case(nan=True))
def test_nm_mask_with_nan_scores_still_follows_the_pattern(case):
    s, pattern = case
    mask = nm_mask(s, pattern)
    groups = mask.reshape(s.shape[0], -1, pattern.m)
    assert bool((groups.sum(-1) == pattern.m - pattern.n).all())
    assert_pruned_below_kept(s.reshape(s.shape[0], -1, pattern.m), groups)


@MASKS
@given(st.integers(1, 5), st.integers(1, 6), _PATTERNS, st.data())
def test_follows_pattern_means_at_most_n_nonzeros_in_every_group_of_m(rows, groups, pattern, data):
    cols = groups * pattern.m + data.draw(st.sampled_from([0, 0, 0, 1]))     # sometimes not a multiple of M
    weight = torch.from_numpy(data.draw(arrays(np.float32, (rows, cols), elements=st.sampled_from([0.0, 1.0, -2.0]))))
    if cols % pattern.m:
        expected = False
    else:
        expected = all(int((weight[r, g:g + pattern.m] != 0).sum()) <= pattern.n
                       for r in range(rows) for g in range(0, cols, pattern.m))
    assert follows_pattern(weight, pattern) == expected
    assert follows_pattern(weight, Pattern())                                  # unstructured: anything goes
    assert sparsity_of(weight) == float((weight == 0).sum()) / weight.numel()


@MASKS
@given(scores(rows=st.integers(1, 12), nan=True), st.integers(1, 9), st.integers(1, 9), st.floats(0, 0.99))
def test_block_mask_prunes_whole_tiles_of_lowest_mean_within_the_weight_budget(s, height, width, sparsity):
    """Rows, columns and blocks: whole tiles (partial at the edges), lowest mean first (NaN highest), as many
    as fit in int(numel × sparsity) weights; with full tiles only, exactly budget // tile size of them."""
    mask = block_mask(s, height, width, sparsity)
    assert mask.dtype == torch.bool and mask.shape == s.shape
    rows, cols = s.shape
    tiles = [(r, c) for r in range(0, rows, height) for c in range(0, cols, width)]
    cut = [(mask[r:r + height, c:c + width], s[r:r + height, c:c + width].double()) for r, c in tiles]
    assert all(bool(m.all()) or not bool(m.any()) for m, _ in cut)
    budget = int(s.numel() * sparsity)
    assert int(mask.sum()) <= budget
    if rows % height == 0 and cols % width == 0:
        assert int(mask.sum()) == budget // (height * width) * height * width
    means = [float(t.mean().nan_to_num(nan=np.inf, posinf=np.inf, neginf=-np.inf)) for _, t in cut]
    pruned = [mean for (m, _), mean in zip(cut, means) if bool(m.all())]
    kept = [mean for (m, _), mean in zip(cut, means) if not bool(m.any())]
    if pruned and kept:      # float32 sums against float64 ones: equal up to (tile size) × ε × max |score|
        finite = s.double()[s.double().isfinite()]
        slack = 1e-5 * max(1.0, float(finite.abs().max()) if finite.numel() else 0.0)
        assert max(pruned) <= min(kept) + slack
