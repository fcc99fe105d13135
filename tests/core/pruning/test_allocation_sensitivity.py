"""Allocations from a sensitivity profile and given block by block: the weighted mean is the target within
0.5% (clipping or not), sensitive blocks get less, bounds hold, N:M levels stay on the pattern's grid."""

from __future__ import annotations

import json

import pytest

from core.errors import UserError
from core.patterns import UNSTRUCTURED, parse_pattern
from core.pruning import allocation
from core.pruning.allocation import AllocationOptions, sensitivity_sparsities, weighted_mean


def check(values, params, target, lo, hi):
    assert abs(weighted_mean(values, params) - target) <= 0.005 * target
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in values)


@pytest.mark.parametrize("scores, params, target, lo, hi", [
    ([5.0, 1.0, 0.2, 0.0, 12.0, 3.0], [10, 10, 10, 10, 10, 10], 0.5, 0.3, 0.7),
    ([40.0, 0.1, 0.1, 0.1], [1, 3, 2, 5], 0.6, 0.1, 0.8),          # clipping binds at both ends
    ([1.0, 2.0, 3.0], [7, 1, 1], 0.4, 0.0, 0.95),
])
def test_the_weighted_mean_is_the_target_and_sensitive_blocks_get_less(scores, params, target, lo, hi):
    values = sensitivity_sparsities(scores, params, target, lo, hi)
    check(values, params, target, lo, hi)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    assert all(values[a] >= values[b] - 1e-12 for a, b in zip(order, order[1:]))   # more sensitive, not sparser


def test_clipping_binds_and_the_free_blocks_make_up_for_it():
    scores, params = [100.0, 0.0, 0.0, 0.0], [1, 1, 1, 1]
    values = sensitivity_sparsities(scores, params, 0.5, 0.2, 0.6)
    assert values[0] == pytest.approx(0.2)                    # the sensitive one is held at min
    assert values[1:] == pytest.approx([0.6, 0.6, 0.6])       # robust ones at max ... and the mean is 0.5
    check(values, params, 0.5, 0.2, 0.6)
    uninformative = sensitivity_sparsities([3.0, 3.0], [1, 1], 0.45, 0.1, 0.9)
    assert uninformative == pytest.approx([0.45, 0.45])


def test_the_inverse_rule_where_nothing_clips():
    values = sensitivity_sparsities([1.0, 3.0], [1, 1], 0.2, 0.0, 0.9)
    eps = 0.05 * 2.0
    ratio = (1 / (1 + eps)) / (1 / (3 + eps))
    assert values[0] / values[1] == pytest.approx(ratio)


def test_a_profile_file_gives_a_per_block_allocation_and_nm_levels(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"block_scores": [{"block": i, "params": 100, "score": s}
                                                 for i, s in enumerate([9.0, 0.5, 0.1, 2.0])]}))
    options = AllocationOptions("sensitivity", profile=str(path), min_sparsity=0.2, max_sparsity=0.8)
    options.validate(0.5, UNSTRUCTURED)
    chosen = allocation.preset(options, [100] * 4, 0.5, UNSTRUCTURED)
    check(chosen.sparsity, [100] * 4, 0.5, 0.2, 0.8)
    assert chosen.sparsity[0] == min(chosen.sparsity) and chosen.describe()["kind"] == "sensitivity"
    nm = allocation.preset(options, [100] * 4, 0.5, parse_pattern("2:4"))
    assert sum(nm.sparsity) / 4 == pytest.approx(0.5)
    assert all(round(s * 4) == s * 4 for s in nm.sparsity) and nm.sparsity[0] <= nm.sparsity[2]
    with pytest.raises(UserError, match="profile has 4 blocks and this model 3"):
        allocation.preset(options, [100] * 3, 0.5, UNSTRUCTURED)


def test_explicit_sparsities_are_used_as_given_and_checked():
    options = AllocationOptions("explicit", sparsities=(0.3, 0.7, 0.5))
    options.validate(0.5, UNSTRUCTURED)
    assert allocation.preset(options, [10, 10, 10], 0.5, UNSTRUCTURED).sparsity == [0.3, 0.7, 0.5]
    with pytest.raises(UserError, match="average"):
        allocation.preset(options, [10, 30, 10], 0.5, UNSTRUCTURED)    # weighted mean 0.58
    with pytest.raises(UserError, match="one per block"):
        allocation.preset(options, [10, 10], 0.5, UNSTRUCTURED)
    with pytest.raises(UserError, match="outside"):
        AllocationOptions("explicit", sparsities=(0.3, 1.0)).validate(0.5, UNSTRUCTURED)
    with pytest.raises(UserError, match="multiple of 1/4"):
        AllocationOptions("explicit", sparsities=(0.3, 0.7)).validate(0.5, parse_pattern("2:4"))


@pytest.mark.parametrize("options, message", [
    (AllocationOptions("sensitivity"), "needs a profile"),
    (AllocationOptions("sensitivity", profile="/nonexistent.json"), "no such file"),
    (AllocationOptions("uniform", profile="p.json"), "sensitivity allocation"),
])
def test_bad_sensitivity_options_are_refused(options, message):
    with pytest.raises(UserError, match=message):
        options.validate(0.5, UNSTRUCTURED)


def test_bounds_that_cannot_reach_the_target_are_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{}")
    with pytest.raises(UserError, match="averages 0.5"):
        AllocationOptions("sensitivity", profile=str(path), min_sparsity=0.6, max_sparsity=0.9).validate(
            0.5, UNSTRUCTURED)
