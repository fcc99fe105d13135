"""Editing a per-block allocation by hand: set one block's sparsity, the others make up for it.

The parameter-weighted mean sparsity (the share of the prunable weights removed) is what a user
chose; when one block is set to a new value the others move to hold it. Of all the ways to do that,
`rebalance` takes the one that changes the other blocks least — the smallest parameter-weighted sum of
squared changes, each block kept within [lo, hi] — which is every free block moved by the same amount,
a block that reaches a bound stopping there (the KKT conditions of that projection). Blocks in `locked`
(ones the user set before) do not move. A value the others cannot make up for is brought to the
nearest one they can.

`resulting_size` estimates what the edited allocation leaves: weights kept, and the bytes of the kept
values plus a one-bit mask per prunable weight (how a sparse format stores unstructured sparsity; an
ordinary folder stores the zeros and stays the dense size).
"""

from __future__ import annotations

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
