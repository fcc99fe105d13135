"""Editing an allocation by hand: rebalance against a brute-force search over which blocks sit at a
bound (the projection's active sets), and the size estimate against counting a pruned model's zeros."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from core.errors import UserError
from core.pruning.allocation_edit import (feasible_range, nearest_feasible_level, rebalance, resulting_size,
                                          shift_to_mean, snap_to_levels, weighted_mean)


def brute_force(sparsities, params, index, value, lo, hi, locked=()):
    """Among every assignment of the free blocks to {lo, hi, moved}, the one holding the weighted mean with
    the smallest weighted squared change: enumerate, solve each for the common move, keep the best."""
    free = [i for i in range(len(sparsities)) if i != index and i not in locked]
    mean_total = sum(s * w for s, w in zip(sparsities, params))
    best, best_cost = None, float("inf")
    for kinds in itertools.product("lhm", repeat=len(free)):
        out = list(sparsities)
        out[index] = value
        for i, k in zip(free, kinds):
            if k != "m":
                out[i] = lo if k == "l" else hi
        moved = [i for i, k in zip(free, kinds) if k == "m"]
        rest = sum(out[i] * params[i] for i in range(len(out)) if i not in moved)
        weight = sum(params[i] for i in moved)
        if moved:
            t = (mean_total - rest - sum(sparsities[i] * params[i] for i in moved)) / weight
            for i in moved:
                out[i] = sparsities[i] + t
        elif abs(rest - mean_total) > 1e-9 * max(1, mean_total):
            continue
        if any(not lo - 1e-12 <= out[i] <= hi + 1e-12 for i in free):
            continue
        cost = sum(params[i] * (out[i] - sparsities[i]) ** 2 for i in free)
        if cost < best_cost - 1e-15:
            best, best_cost = out, cost
    return best


@pytest.mark.parametrize("seed", range(60))
def test_rebalance_is_the_least_change_that_holds_the_mean(seed):
    rng = random.Random(seed)
    blocks = rng.randint(2, 6)
    params = [rng.choice([100, 250, 1000, 4000]) for _ in range(blocks)]
    lo, hi = rng.choice([(0.0, 0.99), (0.1, 0.9), (0.3, 0.7)])
    sparsities = [rng.uniform(lo, hi) for _ in range(blocks)]
    locked = set(rng.sample(range(blocks), rng.randint(0, blocks - 2)))
    index = rng.choice([i for i in range(blocks) if i not in locked])
    low, high = feasible_range(sparsities, params, index, lo, hi, locked)
    wanted = rng.uniform(lo - 0.1, hi + 0.1)
    got = rebalance(sparsities, params, index, wanted, lo, hi, locked)
    expected_value = min(high, max(low, wanted))
    assert got[index] == pytest.approx(expected_value)
    assert weighted_mean(got, params) == pytest.approx(weighted_mean(sparsities, params), abs=1e-12)
    assert all(got[i] == sparsities[i] for i in locked)
    assert all(lo - 1e-12 <= s <= hi + 1e-12 for s in got)
    expected = brute_force(sparsities, params, index, expected_value, lo, hi, locked)
    assert expected is not None
    assert list(got) == pytest.approx(expected, abs=1e-9)


def test_the_feasible_range_is_where_the_others_reach_their_bounds():
    params, sparsities = [1, 1, 2], [0.5, 0.5, 0.5]
    low, high = feasible_range(sparsities, params, 0, 0.2, 0.8)
    # the mean (2.0 weighted) held with blocks 1 and 2 (weight 3) at 0.8: block 0 at 2 - 2.4 < 0.2, so 0.2;
    # with them at 0.2: 2 - 0.6 = 1.4 > 0.8, so 0.8
    assert (low, high) == pytest.approx((0.2, 0.8))
    low, high = feasible_range([0.5, 0.5], [3, 1], 1, 0.4, 0.6)
    # block 0 (weight 3) within 0.1 of 0.5 makes up 0.3 of block 1's weight 1: block 1 in [0.2, 0.8] ∩ [0.4, 0.6]
    assert (low, high) == pytest.approx((0.4, 0.6))
    low, high = feasible_range([0.5, 0.5], [1, 3], 0, 0.4, 0.6)
    assert (low, high) == pytest.approx((0.4, 0.6))
    assert feasible_range([0.5, 0.5, 0.5], [1, 1, 1], 0, locked={1, 2}) == (0.5, 0.5)


def test_a_drag_moves_the_others_together_and_stops_them_at_the_bounds():
    got = rebalance([0.5] * 4, [1] * 4, 0, 0.2, 0.0, 0.99)
    assert got == pytest.approx((0.2, 0.6, 0.6, 0.6))
    got = rebalance([0.5, 0.5, 0.88, 0.5], [1] * 4, 0, 0.2, 0.0, 0.9)
    # the common move would be +0.1; block 2 stops at 0.9 after +0.02, blocks 1 and 3 take the rest
    assert got == pytest.approx((0.2, 0.64, 0.9, 0.64))


def test_shift_to_mean_reaches_a_new_target_or_the_nearest_bound():
    params = [10, 20, 30]
    got = shift_to_mean([0.3, 0.5, 0.7], params, 0.6)
    assert weighted_mean(got, params) == pytest.approx(0.6)
    assert got[1] - got[0] == pytest.approx(0.2) and got[2] - got[1] == pytest.approx(0.2)
    assert shift_to_mean([0.3, 0.5], [1, 1], 0.95, 0.0, 0.9) == pytest.approx((0.9, 0.9))


def test_resulting_size_counts_what_a_pruned_tensor_keeps():
    torch.manual_seed(0)
    weights = [torch.randn(32, 48), torch.randn(64, 16)]
    sparsities = [0.25, 0.75]
    kept = 0
    for w, s in zip(weights, sparsities):
        k = round(w.numel() * s)
        threshold = w.abs().flatten().kthvalue(k).values
        kept += int((w.abs() > threshold).sum())
    size = resulting_size([w.numel() for w in weights], sparsities, other_params=500, bytes_per_weight=2)
    assert size.kept_params == kept + 500
    assert size.total_params == sum(w.numel() for w in weights) + 500
    assert size.dense_bytes == 2 * size.total_params
    assert size.sparse_bytes == 2 * (kept + 500) + (size.prunable_params + 7) // 8


def test_mismatched_lengths_and_bad_bounds_say_what_to_do():
    with pytest.raises(UserError, match="one per decoder block"):
        rebalance([0.5, 0.5], [1, 1, 1], 0, 0.3)
    with pytest.raises(UserError, match="min"):
        rebalance([0.5, 0.5], [1, 1], 0, 0.3, 0.8, 0.2)
    with pytest.raises(UserError, match="does not exist"):
        rebalance([0.5, 0.5], [1, 1], 5, 0.3)


# ---- N:M levels -----------------------------------------------------------------------------------------

def _closest_levels_by_enumeration(sparsities, m, target, low, high):
    """Equal blocks: of every choice of levels in [low, high] whose mean is the target, the one nearest the
    given values (least sum of squared changes)."""
    want = [s * m for s in sparsities]
    best = None
    for levels in itertools.product(range(low, high + 1), repeat=len(sparsities)):
        if sum(levels) != round(target * m * len(levels)):
            continue
        cost = sum((k - w) ** 2 for k, w in zip(levels, want))
        best = cost if best is None or cost < best else best
    return best


@pytest.mark.parametrize("m", [4, 8])
def test_levels_of_equal_blocks_meet_the_mean_and_are_the_nearest_such_choice(m):
    rng = random.Random(m)
    for _ in range(25):
        sparsities = [rng.uniform(0.05, 0.9) for _ in range(5)]
        target = round(rng.uniform(0.2, 0.7) * m * 5) / (m * 5)
        snapped = snap_to_levels(sparsities, [10] * 5, m, target)
        levels = [round(s * m) for s in snapped]
        assert all(abs(s * m - k) < 1e-12 for s, k in zip(snapped, levels))
        assert sum(levels) == round(target * m * 5)
        cost = sum((k - s * m) ** 2 for k, s in zip(levels, sparsities))
        assert cost == pytest.approx(_closest_levels_by_enumeration(sparsities, m, target, 0, m - 1))


def test_levels_keep_bounds_and_locked_blocks_and_no_single_move_would_get_closer():
    rng = random.Random(3)
    m, lo, hi = 4, 0.25, 0.75
    for _ in range(40):
        params = [rng.randint(1, 9) * 100 for _ in range(6)]
        sparsities = [rng.uniform(0.0, 0.95) for _ in range(6)]
        target = rng.uniform(0.3, 0.7)
        snapped = snap_to_levels(sparsities, params, m, target, lo, hi, locked={0})
        levels = [round(s * m) for s in snapped]
        assert all(1 <= k <= 3 for k in levels)
        assert levels[0] == min(3, max(1, round(sparsities[0] * m)))
        excess = sum(k * w for k, w in zip(levels, params)) - target * m * sum(params)
        for i in range(1, 6):
            for step in (-1, 1):
                if 1 <= levels[i] + step <= 3:
                    assert abs(excess + step * params[i]) >= abs(excess) - 1e-9


def test_levels_default_to_the_current_mean_and_leave_multiples_alone():
    assert snap_to_levels([0.5, 0.25, 0.75], [1, 1, 1], 4) == (0.5, 0.25, 0.75)
    assert weighted_mean(snap_to_levels([0.45, 0.55, 0.5, 0.5], [1, 1, 1, 1], 4), [1] * 4) == 0.5


def test_levels_refuse_bounds_that_hold_no_level_and_a_pattern_without_groups():
    with pytest.raises(UserError, match="no multiple of 1/4 lies within"):
        snap_to_levels([0.4], [1], 4, lo=0.3, hi=0.45)
    with pytest.raises(UserError, match="M of at least 2"):
        snap_to_levels([0.4], [1], 1)


def test_levels_spread_what_successive_edits_take_instead_of_piling_it_on_a_few_blocks():
    params, m = [10] * 12, 8
    values = (0.5,) * 12
    for block in (0, 11):                            # the editor: set a block, rebalance, snap, and again
        values = rebalance(values, params, block, 0.25, 0.0, 0.95, locked={0} - {block} if block else ())
        values = snap_to_levels(values, params, m, 0.5, locked={0, block})
    assert values[0] == values[11] == 0.25
    assert weighted_mean(values, params) == pytest.approx(0.5)
    assert sorted(values[1:11]) == [0.5] * 6 + [0.625] * 4        # four blocks one level up, none two


def test_a_value_the_others_cannot_make_up_for_goes_to_the_nearest_level_they_can():
    params, m, hi = [100, 300, 200, 400], 4, 0.6
    values = (0.5,) * 4
    # block 3 (400 weights) to 0: the others (600 weights) rise at most to 0.6, so block 3 can go no lower
    # than (500 − 360) / 400 = 0.35, whose nearest level above is 0.5
    assert feasible_range(values, params, 3, 0.0, hi) == pytest.approx((0.35, 0.6))
    assert nearest_feasible_level(values, params, 3, 0.0, m, 0.0, hi) == 0.5
    assert nearest_feasible_level(values, params, 3, 0.3, m, 0.0, hi) == 0.5
    assert nearest_feasible_level(values, params, 0, 0.1, m, 0.0, hi) == 0.0      # within reach: plain rounding
    for value in (0.0, 0.1, 0.3, 0.6, 0.9):                       # and after it the levels hold the mean exactly
        level = nearest_feasible_level(values, params, 3, value, m, 0.0, hi)
        moved = rebalance(values, params, 3, level, 0.0, hi)
        snapped = snap_to_levels(moved, params, m, 0.5, 0.0, hi, locked={3})
        assert weighted_mean(snapped, params) == pytest.approx(0.5)
