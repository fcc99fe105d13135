"""Editing a per-block allocation by hand: set one block's sparsity, the others make up for it.

The parameter-weighted mean sparsity (the share of the prunable weights removed) is what a user
chose; when one block is set to a new value the others move to hold it. Of all the ways to do that,
`rebalance` takes the one that changes the other blocks least — the smallest parameter-weighted sum of
squared changes, each block kept within [lo, hi] — which is every free block moved by the same amount,
a block that reaches a bound stopping there (the KKT conditions of that projection). Blocks in `locked`
(ones the user set before) do not move. A value the others cannot make up for is brought to the
nearest one they can.

`snap_to_levels` brings an allocation to the levels an N:M pattern allows (multiples of 1/M).

`resulting_size` estimates what the edited allocation leaves: weights kept, and the bytes of the kept
values plus a one-bit mask per prunable weight (how a sparse format stores unstructured sparsity; an
ordinary folder stores the zeros and stays the dense size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import UserError


def weighted_mean(sparsities: Sequence[float], params: Sequence[int]) -> float:
    """The share of the prunable weights that `sparsities` remove."""
    _check(sparsities, params)
    total = sum(params)
    return sum(s * w for s, w in zip(sparsities, params)) / total if total else 0.0


def shift_to_mean(sparsities: Sequence[float], params: Sequence[int], target: float, lo: float = 0.0,
                  hi: float = 0.99, locked: Iterable[int] = ()) -> tuple[float, ...]:
    """`sparsities` moved by one common amount (each clipped to [lo, hi]; `locked` blocks stay) so that
    their weighted mean is `target`, or as close to it as the bounds allow."""
    _check(sparsities, params)
    _check_bounds(lo, hi)
    locked = set(locked)
    free = [i for i in range(len(sparsities)) if i not in locked and params[i] > 0]
    fixed = sum(sparsities[i] * params[i] for i in range(len(sparsities)) if i not in free)
    wanted = target * sum(params) - fixed
    shifted = _common_shift([sparsities[i] for i in free], [params[i] for i in free], wanted, lo, hi)
    out = list(sparsities)
    for i, value in zip(free, shifted):
        out[i] = value
    return tuple(float(s) for s in out)


def feasible_range(sparsities: Sequence[float], params: Sequence[int], index: int, lo: float = 0.0,
                   hi: float = 0.99, locked: Iterable[int] = ()) -> tuple[float, float]:
    """The values block `index` can take while the others, within [lo, hi], hold the weighted mean."""
    _check(sparsities, params)
    _check_bounds(lo, hi)
    locked = set(locked) - {index}
    others = [i for i in range(len(sparsities)) if i != index and i not in locked]
    if params[index] <= 0:
        return float(sparsities[index]), float(sparsities[index])
    total = sum(s * w for s, w in zip(sparsities, params))
    fixed = sum(sparsities[i] * params[i] for i in locked)
    free_weight = sum(params[i] for i in others)
    low = (total - fixed - free_weight * hi) / params[index]
    high = (total - fixed - free_weight * lo) / params[index]
    low, high = max(lo, low), min(hi, high)
    if low > high:                      # the others cannot hold the mean at all: the block stays
        return float(sparsities[index]), float(sparsities[index])
    return float(low), float(high)


def rebalance(sparsities: Sequence[float], params_per_block: Sequence[int], index: int, value: float,
              lo: float = 0.0, hi: float = 0.99, locked: Iterable[int] = ()) -> tuple[float, ...]:
    """Block `index` set to `value` (brought into what is feasible), the other unlocked blocks shifted
    together to hold the parameter-weighted mean; every moved block stays in [lo, hi]."""
    _check(sparsities, params_per_block)
    if not 0 <= index < len(sparsities):
        raise UserError(f"block {index} does not exist: the model has {len(sparsities)} blocks.")
    low, high = feasible_range(sparsities, params_per_block, index, lo, hi, locked)
    value = min(high, max(low, float(value)))
    mean = weighted_mean(sparsities, params_per_block)
    edited = list(sparsities)
    edited[index] = value
    return shift_to_mean(edited, params_per_block, mean, lo, hi, set(locked) | {index})


def nearest_feasible_level(sparsities: Sequence[float], params: Sequence[int], index: int, value: float, m: int,
                           lo: float = 0.0, hi: float = 0.99, locked: Iterable[int] = ()) -> float:
    """The multiple of 1/m nearest `value` that block `index` can take while the others, within [lo, hi],
    hold the weighted mean (`feasible_range` brought to levels); the block's own value when no level fits."""
    first, last = _level_range(*feasible_range(sparsities, params, index, lo, hi, locked), m)
    if first > last:
        return float(sparsities[index])
    return min(last, max(first, round(float(value) * m))) / m


def snap_to_levels(sparsities: Sequence[float], params: Sequence[int], m: int, target: float | None = None,
                   lo: float = 0.0, hi: float = 0.99, locked: Iterable[int] = ()) -> tuple[float, ...]:
    """Every block's sparsity made a multiple of 1/m, what an N:m pattern per block can be (k of m pruned,
    k < m), within [lo, hi]. Locked blocks go to their nearest level; the others start at theirs, and then
    one block at a time moves one level, while that brings the parameter-weighted mean closer to `target`
    (by default the mean of `sparsities`): the move that gets nearest, the one that strays least from the
    values among equals. With equal blocks that is the nearest choice of levels with the target's mean
    (a separable convex problem, which such moves solve), reached whenever target·m·blocks is whole."""
    _check(sparsities, params)
    _check_bounds(lo, hi)
    if m < 2:
        raise UserError(f"an N:M pattern needs M of at least 2, not {m}.")
    low, high = _level_range(lo, hi, m)
    if low > high:
        raise UserError(f"no multiple of 1/{m} lies within [{lo:g}, {hi:g}] below {(m - 1) / m:g}: widen the "
                        f"bounds for an N:{m} pattern.")
    goal = (weighted_mean(sparsities, params) if target is None else float(target)) * m * sum(params)
    want = [float(s) * m for s in sparsities]
    levels = [min(high, max(low, round(w))) for w in want]
    locked = set(locked)
    free = [i for i in range(len(levels)) if i not in locked and params[i] > 0]
    excess = sum(k * w for k, w in zip(levels, params)) - goal
    while True:
        step = -1 if excess > 0 else 1
        helpful = [i for i in free if low <= levels[i] + step <= high and abs(excess + step * params[i]) < abs(excess)]
        if not helpful:
            break
        # the move that gets nearest the target; among equals, the one that adds the least weighted squared
        # distance from the values, w·((k+step−v)² − (k−v)²); among those, the block furthest on the other
        # side (the lowest when raising), so that equal changes spread over the blocks instead of piling up
        i = min(helpful, key=lambda i: (round(abs(excess + step * params[i]), 9),
                                        round(params[i] * (1 + 2 * step * (levels[i] - want[i])), 9),
                                        step * levels[i], i))
        levels[i] += step
        excess += step * params[i]
    return tuple(k / m for k in levels)


@dataclass(frozen=True)
class SizeEstimate:
    prunable_params: int       # weights of the prunable linear layers
    pruned_params: int         # of which the allocation removes
    other_params: int          # embeddings, norms, the head: never pruned
    bytes_per_weight: float

    @property
    def total_params(self) -> int:
        return self.prunable_params + self.other_params

    @property
    def kept_params(self) -> int:
        return self.total_params - self.pruned_params

    @property
    def dense_bytes(self) -> int:
        return int(self.total_params * self.bytes_per_weight)

    @property
    def sparse_bytes(self) -> int:
        """Kept values, plus one mask bit for every prunable weight."""
        return int(self.kept_params * self.bytes_per_weight + (self.prunable_params + 7) // 8)


def resulting_size(params_per_block: Sequence[int], sparsities: Sequence[float], other_params: int = 0,
                   bytes_per_weight: float = 2.0) -> SizeEstimate:
    """What the allocation leaves of a model with these prunable parameters per block."""
    _check(sparsities, params_per_block)
    pruned = sum(round(w * s) for w, s in zip(params_per_block, sparsities))
    return SizeEstimate(int(sum(params_per_block)), int(pruned), int(other_params), float(bytes_per_weight))


def _level_range(lo: float, hi: float, m: int) -> tuple[int, int]:
    """The first and last count of m pruned (below m: a group keeps at least one) within [lo, hi]."""
    return math.ceil(lo * m - 1e-9), min(m - 1, math.floor(hi * m + 1e-9))


def _common_shift(values: list[float], weights: list[int], wanted: float, lo: float, hi: float) -> list[float]:
    """clip(v + t, lo, hi) for the t at which Σ w·clip(v + t) = `wanted` (the nearest bound when none does).
    The sum is piecewise linear and non-decreasing in t, with corners where a value meets a bound: found
    exactly on the segment that crosses `wanted`."""
    if not values:
        return []

    def total(t: float) -> float:
        return sum(w * min(hi, max(lo, v + t)) for v, w in zip(values, weights))

    corners = sorted({lo - v for v in values} | {hi - v for v in values})
    if wanted <= total(corners[0]):
        t = corners[0]
    elif wanted >= total(corners[-1]):
        t = corners[-1]
    else:
        t = corners[-1]
        for a, b in zip(corners, corners[1:]):
            fa, fb = total(a), total(b)
            if fa <= wanted <= fb:
                t = a if fb == fa else a + (wanted - fa) * (b - a) / (fb - fa)
                break
    return [min(hi, max(lo, v + t)) for v in values]


def _check(sparsities: Sequence[float], params: Sequence[int]) -> None:
    if len(sparsities) != len(params):
        raise UserError(f"{len(sparsities)} sparsities for {len(params)} blocks: give one per decoder block.")
    if any(w < 0 for w in params):
        raise UserError("a block cannot have a negative number of parameters.")


def _check_bounds(lo: float, hi: float) -> None:
    if not 0 <= lo <= hi < 1:
        raise UserError(f"the bounds [{lo:g}, {hi:g}] must satisfy 0 ≤ min ≤ max < 1.")
