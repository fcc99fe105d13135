"""How much of each decoder block to prune: the same everywhere, OWL's outlier-weighted allocation, one from
a sensitivity profile, or one given block by block.

OWL (Yin et al., 2024; reference code luuyin/OWL): a block's outlier ratio is the share of its Wanda
scores |W_ij|·‖X_j‖₂ above M times the mean score of the block (all of its linear layers together, as
the reference computes it), measured on the dense model. Ratios are mapped linearly onto a range 2λ
wide, shifted so that the mean density is 1 − S: blocks with more outliers keep more weights, and the
average over blocks stays S. Blocks of a decoder have the same size, so the parameter-weighted
average is the same as the mean over blocks.

For N:M patterns a block's sparsity can only be a multiple of 1/M (N' of M kept; M of M is dense), so
the allocation is a pattern per block: OWL's sparsities rounded to those levels, then moved one level
at a time, starting with the blocks rounded furthest, until the mean is S again.

Sensitivity (from a profile, `core.studies.sensitivity`): block i's sensitivity s_i is the sum of the
Δperplexity of its units (negative ones count as 0; a fast profile's output errors stand in for Δppl).
Its sparsity is inversely proportional to it, as in the one-layer-at-a-time sensitivity analyses the
pruning literature runs by hand (Neural Magic's per-layer sparsity recipe; OWL's clipped range):
S_i = clip(c / (s_i + ε), min, max), ε = 5% of the mean sensitivity (so a block that costs nothing does
not take everything), with c found by bisection so that the parameter-weighted mean of S_i is S. That is
reachable whenever min ≤ S ≤ max, clipping or not. N:M patterns take those sparsities to levels of 1/M
the way OWL's are (`nm_levels`). A profile by layer is aggregated to blocks.

Explicit: one sparsity per block, used as given (an allocation edited by hand in the studio); its
parameter-weighted mean must be within 0.5% of S.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..patterns import Pattern

KINDS = ("uniform", "owl", "sensitivity", "explicit")
PRESET = ("sensitivity", "explicit")   # chosen from the options and the block sizes alone, no pass over the data
TOLERANCE = 0.005                      # relative: the achieved mean sparsity is within 0.5% of the target


@dataclass(frozen=True)
class AllocationOptions:
    kind: str = "uniform"
    owl_lambda: float = 0.08       # half-width of OWL's sparsity range (the paper's default)
    owl_threshold: float = 5.0     # M: a score is an outlier above M × its block's mean score
    sparsities: tuple[float, ...] = ()          # explicit: one per decoder block
    profile: Any = field(default=None, compare=False)   # sensitivity: a `Profile` or the path of its JSON file
    min_sparsity: float | None = None           # sensitivity: None = max(0, S − 0.25)
    max_sparsity: float | None = None           # sensitivity: None = min(0.95, S + 0.25)

    def bounds(self, sparsity: float) -> tuple[float, float]:
        lo = max(0.0, sparsity - 0.25) if self.min_sparsity is None else self.min_sparsity
        hi = min(0.95, sparsity + 0.25) if self.max_sparsity is None else self.max_sparsity
        return lo, hi

    def validate(self, sparsity: float, pattern: Pattern) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown allocation {self.kind!r}: choose one of {', '.join(KINDS)}.")
        if self.kind != "sensitivity" and (self.profile is not None or self.min_sparsity is not None
                                           or self.max_sparsity is not None):
            raise UserError("a profile and sparsity bounds are for the sensitivity allocation: add "
                            "--allocation sensitivity, or drop them.")
        if self.kind == "uniform":
            return
        if self.kind == "sensitivity":
            return self._validate_sensitivity(sparsity)
        if self.kind == "explicit":
            return self._validate_explicit(pattern)
        if not 0 <= self.owl_lambda <= 0.5:
            raise UserError(f"OWL λ {self.owl_lambda:g} must be in [0, 0.5] (the paper uses 0.08).")
        if not self.owl_threshold > 0:
            raise UserError(f"OWL outlier threshold M {self.owl_threshold:g} must be positive (the paper uses 5).")
        if not pattern.structured and not (self.owl_lambda <= sparsity <= 1 - self.owl_lambda):
            raise UserError(f"OWL moves each block's sparsity up to {self.owl_lambda:g} either side of the target, "
                            f"which {sparsity:g} cannot allow: choose a sparsity in [{self.owl_lambda:g}, "
                            f"{1 - self.owl_lambda:g}] or a smaller λ.")

    def _validate_sensitivity(self, sparsity: float) -> None:
        if self.profile is None:
            raise UserError("the sensitivity allocation needs a profile: give --profile PROFILE.json (written by "
                            "`compression-studio profile`).")
        if isinstance(self.profile, (str, Path)) and not Path(self.profile).expanduser().is_file():
            raise UserError(f"profile {self.profile}: no such file.")
        lo, hi = self.bounds(sparsity)
        if not 0 <= lo <= hi < 1:
            raise UserError(f"sparsity bounds [{lo:g}, {hi:g}] must satisfy 0 ≤ min ≤ max < 1.")
        if not lo <= sparsity <= hi:
            raise UserError(f"no allocation within [{lo:g}, {hi:g}] averages {sparsity:g}: choose bounds around "
                            f"the target sparsity.")

    def _validate_explicit(self, pattern: Pattern) -> None:
        if not self.sparsities:
            raise UserError("an explicit allocation needs one sparsity per decoder block.")
        for i, value in enumerate(self.sparsities):
            if not 0 <= value < 1:
                raise UserError(f"block {i}: sparsity {value:g} is outside [0, 1).")
            if pattern.structured and abs(value * pattern.m - round(value * pattern.m)) > 1e-6:
                raise UserError(f"block {i}: sparsity {value:g} is not a multiple of 1/{pattern.m}, which an "
                                f"N:{pattern.m} pattern needs.")

    def describe(self) -> dict:
        described = {"kind": self.kind, "owl_lambda": self.owl_lambda, "owl_threshold": self.owl_threshold}
        if self.kind == "explicit":
            described["sparsities"] = list(self.sparsities)
        if self.kind == "sensitivity":
            described.update(min_sparsity=self.min_sparsity, max_sparsity=self.max_sparsity,
                             profile=_profile_label(self.profile))
        return described


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


def sensitivity_sparsities(scores: list[float], params: list[int], target: float, lo: float, hi: float) -> list[float]:
    """S_i = clip(c / (s_i + ε), lo, hi) with c such that Σ p_i S_i / Σ p_i = target (see the module's text)."""
    s = torch.tensor([max(0.0, float(v)) for v in scores], dtype=torch.float64)
    p = torch.tensor(params, dtype=torch.float64)
    if not lo <= target <= hi:
        raise UserError(f"no allocation within [{lo:g}, {hi:g}] averages {target:g}: widen the bounds.")
    if len(scores) == 0 or float(p.sum()) <= 0:
        return [float(target)] * len(scores)
    eps = 0.05 * float(s.mean()) if float(s.mean()) > 0 else 1.0
    inverse = 1.0 / (s + eps)

    def mean_at(c: float) -> float:
        return float(((c * inverse).clamp(lo, hi) * p).sum() / p.sum())

    low, high = 0.0, 1.0
    while mean_at(high) < target and high < 1e300:
        high *= 2
    for _ in range(200):          # the mean grows with c: bisect it onto the target
        mid = (low + high) / 2
        if mean_at(mid) < target:
            low = mid
        else:
            high = mid
    return [float(v) for v in (high * inverse).clamp(lo, hi)]


def weighted_mean(values: list[float], params: list[int]) -> float:
    total = sum(params)
    return sum(v * w for v, w in zip(values, params)) / total if total else 0.0


def read_profile_json(path: Path):
    """The parsed contents of a profile file; a missing or unreadable file is a UserError."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"profile {path}: no such file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"profile {path} is not a JSON file ({exc}): give a file written by "
                        f"`compression-studio profile`.") from None


def block_scores(profile) -> list[dict]:
    """[{block, params, score}] per block from a `Profile` (anything with `block_scores()`) or a profile file."""
    if hasattr(profile, "block_scores"):
        return profile.block_scores()
    path = Path(profile).expanduser()
    data = read_profile_json(path)
    scores = data.get("block_scores") if isinstance(data, dict) else None
    if not isinstance(scores, list):
        raise UserError(f"{path} has no per-block sensitivity (a profile by layer kind has none): profile by "
                        f"layer or by block.")
    return scores


def preset(options: AllocationOptions, block_params: list[int], sparsity: float, pattern: Pattern) -> Allocation:
    """The sensitivity or explicit allocation for a model whose blocks hold `block_params` prunable weights."""
    if options.kind == "explicit":
        return explicit(options, block_params, sparsity, pattern)
    lo, hi = options.bounds(sparsity)
    scores = block_scores(options.profile)
    if len(scores) != len(block_params):
        raise UserError(f"the profile has {len(scores)} blocks and this model {len(block_params)}: it was measured "
                        f"on another model; profile this one first.")
    sensitivity = [float(b["score"]) for b in scores]
    continuous = sensitivity_sparsities(sensitivity, block_params, sparsity, lo, hi)
    described = {"min_sparsity": lo, "max_sparsity": hi, "profile": _profile_label(options.profile),
                 "block_sensitivity": sensitivity}
    if not pattern.structured:
        return Allocation("sensitivity", continuous, None, None, described)
    levels = nm_levels(continuous, sparsity, pattern.m)
    patterns = [Pattern(pattern.m - k, pattern.m) if k else None for k in levels]
    return Allocation("sensitivity", [k / pattern.m for k in levels], patterns, None,
                      {**described, "continuous_sparsity": continuous})


def explicit(options: AllocationOptions, block_params: list[int], sparsity: float, pattern: Pattern) -> Allocation:
    values = [float(v) for v in options.sparsities]
    if len(values) != len(block_params):
        raise UserError(f"the allocation gives {len(values)} sparsities and the model has {len(block_params)} "
                        f"decoder blocks: give one per block.")
    mean = weighted_mean(values, block_params)
    if abs(mean - sparsity) > TOLERANCE * max(sparsity, 1e-9):
        raise UserError(f"the blocks' sparsities average {mean:.4f}, not the target {sparsity:g} (within 0.5%): "
                        f"rebalance them or change the target.")
    patterns = None
    if pattern.structured:
        patterns = [Pattern(pattern.m - round(v * pattern.m), pattern.m) if round(v * pattern.m) else None
                    for v in values]
    return Allocation("explicit", values, patterns, None, {})


def _profile_label(profile) -> str | None:
    if profile is None or isinstance(profile, (str, Path)):
        return None if profile is None else str(profile)
    model = getattr(profile, "model", {}) or {}
    return f"{getattr(profile, 'method', '?')} {getattr(profile, 'pattern', '')} by {getattr(profile, 'unit', '?')} " \
           f"on {model.get('source', '?')}"
