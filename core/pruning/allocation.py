"""How much of each decoder block to prune: the same everywhere, or OWL's outlier-weighted allocation.

OWL (Yin et al., 2024; reference code luuyin/OWL): a block's outlier ratio is the share of its Wanda
scores |W_ij|·‖X_j‖₂ above M times the mean score of the block (all of its linear layers together, as
the reference computes it), measured on the dense model. Ratios are mapped linearly onto a range 2λ
wide, shifted so that the mean density is 1 − S: blocks with more outliers keep more weights, and the
average over blocks stays S. Blocks of a decoder have the same size, so the parameter-weighted
average is the same as the mean over blocks.

For N:M patterns a block's sparsity can only be a multiple of 1/M (N' of M kept; M of M is dense), so
the allocation is a pattern per block: OWL's sparsities rounded to those levels, then moved one level
at a time, starting with the blocks rounded furthest, until the mean is S again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..patterns import Pattern

KINDS = ("uniform", "owl")


@dataclass(frozen=True)
class AllocationOptions:
    kind: str = "uniform"
    owl_lambda: float = 0.08       # half-width of OWL's sparsity range (the paper's default)
    owl_threshold: float = 5.0     # M: a score is an outlier above M × its block's mean score

    def validate(self, sparsity: float, pattern: Pattern) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown allocation {self.kind!r}: choose one of {', '.join(KINDS)}.")
        if self.kind == "uniform":
            return
        if not 0 <= self.owl_lambda <= 0.5:
            raise UserError(f"OWL λ {self.owl_lambda:g} must be in [0, 0.5] (the paper uses 0.08).")
        if not self.owl_threshold > 0:
            raise UserError(f"OWL outlier threshold M {self.owl_threshold:g} must be positive (the paper uses 5).")
        if not pattern.structured and not (self.owl_lambda <= sparsity <= 1 - self.owl_lambda):
            raise UserError(f"OWL moves each block's sparsity up to {self.owl_lambda:g} either side of the target, "
                            f"which {sparsity:g} cannot allow: choose a sparsity in [{self.owl_lambda:g}, "
                            f"{1 - self.owl_lambda:g}] or a smaller λ.")

    def describe(self) -> dict:
        return dict(vars(self))


@dataclass
class Allocation:
    """The sparsity (and for N:M, the pattern; None = dense) chosen for every block."""

    kind: str
    sparsity: list[float]
    patterns: list[Pattern | None] | None = None
    outlier_ratios: list[float] | None = None
    options: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return sum(self.sparsity) / len(self.sparsity)

    def describe(self) -> dict:
        return {
            "kind": self.kind, **self.options,
            "block_sparsity": self.sparsity,
            "block_patterns": None if self.patterns is None else [str(p) if p else "dense" for p in self.patterns],
            "outlier_ratios": self.outlier_ratios,
        }


def outlier_ratio(scores: list[torch.Tensor], threshold: float) -> float:
    """Share of the block's scores (all of its layers together) above `threshold` × their mean."""
    flat = torch.cat([s.flatten().float() for s in scores])
    return float((flat > threshold * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float], target: float, lam: float) -> list[float]:
    """OWL's per-block sparsity: more outliers, less sparsity; the mean stays `target`."""
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = r.max() - r.min()
    if len(ratios) < 2 or spread <= 0:
        return [float(target)] * len(ratios)
    density = (r - r.min()) / spread * (2 * lam)
    density = density - density.mean() + (1 - target)
    return [float(s) for s in (1 - density).clamp(0.0, 0.999)]


def nm_levels(continuous: list[float], target: float, m: int) -> list[int]:
    """Weights pruned per group of M in each block (0 = dense, at most M − 1), close to `continuous` and
    with mean exactly `target` × M."""
    want = [s * m for s in continuous]
    levels = [min(m - 1, max(0, round(w))) for w in want]
    goal = round(target * m * len(levels))
    while sum(levels) != goal:
        if sum(levels) > goal:
            movable = [i for i, l in enumerate(levels) if l > 0]
            i = max(movable, key=lambda i: levels[i] - want[i])
            levels[i] -= 1
        else:
            movable = [i for i, l in enumerate(levels) if l < m - 1]
            if not movable:
                raise UserError(f"no choice of N:{m} patterns per block reaches an average sparsity of {target:g}.")
            i = min(movable, key=lambda i: levels[i] - want[i])
            levels[i] += 1
    return levels


def uniform(blocks: int, sparsity: float, pattern: Pattern) -> Allocation:
    return Allocation("uniform", [sparsity] * blocks, [pattern] * blocks if pattern.structured else None)


def owl(ratios: list[float], sparsity: float, pattern: Pattern, options: AllocationOptions) -> Allocation:
    continuous = owl_sparsities(ratios, sparsity, options.owl_lambda)
    described = {"owl_lambda": options.owl_lambda, "owl_threshold": options.owl_threshold}
    if not pattern.structured:
        return Allocation("owl", continuous, None, list(ratios), described)
    levels = nm_levels(continuous, sparsity, pattern.m)
    patterns = [Pattern(pattern.m - k, pattern.m) if k else None for k in levels]
    return Allocation("owl", [k / pattern.m for k in levels], patterns, list(ratios),
                      {**described, "continuous_sparsity": continuous})
