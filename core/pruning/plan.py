"""The user's pruning choices, validated once; every problem is a `UserError` that says what to do."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from ..compute import resolve_device
from ..errors import UserError
from ..inputs import parse_globs, parse_overrides
from ..patterns import UNSTRUCTURED, Pattern, parse_pattern
from ..quantization.scheme import QuantScheme
from ..recovery.options import RecoveryOptions
from .allocation import Allocation, AllocationOptions
from .methods import METHODS
from .methods.alps import Options as ALPSOptions
from .methods.alps import check_pattern as check_alps_pattern
from .methods.sparsegpt import Options as SparseGPTOptions


@dataclass(frozen=True)
class PrunePlan:
    method: str = "wanda"
    sparsity: float = 0.5
    pattern: Pattern = UNSTRUCTURED
    overrides: tuple[tuple[str, float], ...] = ()   # (name glob, sparsity), first match wins
    ignore: tuple[str, ...] = ()                     # name globs left dense
    sparsegpt: SparseGPTOptions = field(default_factory=SparseGPTOptions)
    alps: ALPSOptions = field(default_factory=ALPSOptions)
    allocation: AllocationOptions = field(default_factory=AllocationOptions)
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    quantization: QuantScheme | None = None          # quantize every pruned (or, with method none, every) layer
    blocks: Allocation | None = None                 # the allocation chosen for this model, once computed
    device: str = "auto"
    batch_size: int = 0                              # windows per forward pass; 0 = about 4096 tokens
    error_tokens: int = 2048                         # calibration tokens the per-layer output error is measured on

    @classmethod
    def build(cls, *, method="wanda", sparsity=None, pattern="unstructured", overrides=(), ignore=(),
              **kwargs) -> "PrunePlan":
        """A validated plan; `overrides` may be typed as 'GLOB=SPARSITY' lines and `ignore` as comma-separated globs."""
        pattern = pattern if isinstance(pattern, Pattern) else parse_pattern(pattern)
        if any(isinstance(item, str) for item in overrides):
            overrides = parse_overrides(overrides)
        # A blank glob would match every layer (see `_matches`): dropped from a list as from the typed text.
        ignore = parse_globs(ignore) if isinstance(ignore, str) else tuple(g.strip() for g in ignore if g.strip())
        if method == "none" and sparsity is None:
            sparsity = 0.0
        if sparsity is None:
            sparsity = pattern.sparsity if pattern.structured else 0.5
        plan = cls(method=method, sparsity=float(sparsity), pattern=pattern, overrides=tuple(overrides), ignore=ignore,
                   **kwargs)
        plan.validate()
        return plan

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}.")
        if not 0 <= self.sparsity < 1:
            raise UserError(f"sparsity {self.sparsity:g} is outside [0, 1): give the fraction of weights to remove, e.g. 0.5.")
        if self.pattern.structured and abs(self.sparsity - self.pattern.sparsity) > 1e-9:
            raise UserError(
                f"pattern {self.pattern} removes {self.pattern.sparsity:.0%} of every group, "
                f"which conflicts with sparsity {self.sparsity:g}: leave the sparsity out or set it to {self.pattern.sparsity:g}."
            )
        if self.pattern.structured and self.overrides:
            raise UserError("per-layer sparsity overrides need the unstructured pattern; use the ignore list to keep layers dense.")
        if self.method == "alps":
            check_alps_pattern(self.pattern)
        for glob, value in self.overrides:
            if not 0 <= value < 1:
                raise UserError(f"override {glob}={value:g}: sparsity must be in [0, 1).")
        options = self.sparsegpt
        if options.blocksize < 1 or (self.pattern.structured and options.blocksize % self.pattern.m):
            raise UserError(f"SparseGPT blocksize {options.blocksize} must be positive and a multiple of M={self.pattern.m or 1}.")
        if not 0 < options.dampening <= options.max_dampening:
            raise UserError(f"SparseGPT dampening {options.dampening:g} must be in (0, {options.max_dampening:g}].")
        alps = self.alps
        if not (alps.rho > 0 and alps.ridge >= 0) or alps.max_iterations < 0 or alps.update_every < 1 or alps.refit_steps < 0:
            raise UserError("ALPS options: ρ must be positive, iterations and refit steps not negative, "
                            "the update interval at least 1 and the ridge not negative.")
        if self.batch_size < 0 or self.error_tokens < 0:
            raise UserError("batch size and error tokens cannot be negative.")
        self.allocation.validate(self.sparsity, self.pattern)
        self.recovery.validate()
        self._validate_quantization()
        resolve_device(self.device)

    def _validate_quantization(self) -> None:
        scheme = self.quantization
        if self.method == "none" and (scheme is None or self.sparsity or self.pattern != UNSTRUCTURED):
            raise UserError("method none prunes nothing: it is for quantizing alone (give a quantization, "
                            "no sparsity and no pattern).")
        if scheme is None:
            return
        scheme.validate()
        if scheme.joint and self.method != "sparsegpt":
            raise UserError(f"the joint pass quantizes inside SparseGPT's sweep, and this run prunes with "
                            f"{self.method}: choose --method sparsegpt or quantize after pruning.")
        if scheme.joint and self.recovery.mode != "none":
            raise UserError("the joint pass quantizes while it prunes, so recovery would train weights off the "
                            "grid: drop --joint or the recovery.")
        if self.recovery.mode == "e2e":
            raise UserError("end-to-end recovery runs after every block is quantized and would move weights off "
                            "the grid: use blockwise recovery, which comes before each block's quantization.")

    @property
    def quantizing(self) -> bool:
        return self.quantization is not None

    @property
    def method_options(self):
        """The options of the chosen method (None for the methods without any)."""
        return {"sparsegpt": self.sparsegpt, "alps": self.alps}.get(self.method)

    def check_globs(self, layer_names: list[str]) -> None:
        """Refuse an ignore or override glob that matches none of the model's prunable layers (a typo would
        otherwise leave the run silently different from what was asked)."""
        globs = [("--ignore", glob) for glob in self.ignore] + [("--override", glob) for glob, _ in self.overrides]
        for option, glob in globs:
            if not any(_matches(name, glob) for name in layer_names):
                example = layer_names[0] if layer_names else "model.layers.0.mlp.down_proj"
                raise UserError(f"the {option} glob {glob!r} matches none of the model's prunable layers (they are "
                                f"named like {example}): fix the glob, or run `compression-studio inspect` to list them.")

    def target_for(self, full_name: str, block: int | None = None) -> float | None:
        """The sparsity for a layer of `block`, or None when it stays dense (the ignore list, or an
        N:M allocation that keeps the whole block dense). Overrides win over the allocation."""
        if any(_matches(full_name, glob) for glob in self.ignore):
            return None
        for glob, value in self.overrides:
            if _matches(full_name, glob):
                return value
        if self.blocks is not None and block is not None:
            if self.blocks.patterns is not None and self.blocks.patterns[block] is None:
                return None
            return self.blocks.sparsity[block]
        return self.sparsity

    @property
    def served_pattern(self) -> Pattern:
        """The one pattern every pruned block follows (an N:M allocation may mix them: then unstructured)."""
        if self.blocks is None or self.blocks.patterns is None:
            return self.pattern
        chosen = {p for p in self.blocks.patterns if p is not None}
        return chosen.pop() if len(chosen) == 1 else UNSTRUCTURED

    def pattern_for(self, block: int) -> Pattern:
        if self.blocks is not None and self.blocks.patterns is not None and self.blocks.patterns[block] is not None:
            return self.blocks.patterns[block]
        return self.pattern

    def describe(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "pattern": str(self.pattern),
            "overrides": [list(o) for o in self.overrides],
            "ignore": list(self.ignore),
            "sparsegpt": vars(self.sparsegpt) if self.method == "sparsegpt" else None,
            "alps": vars(self.alps) if self.method == "alps" else None,
            "allocation": self.blocks.describe() if self.blocks is not None else self.allocation.describe(),
            "recovery": self.recovery.describe(),
            "quantization": self.quantization.describe() if self.quantization is not None else None,
            "batch_size": self.batch_size,
            "error_tokens": self.error_tokens,
        }


def _matches(name: str, glob: str) -> bool:
    return fnmatch.fnmatchcase(name, glob) or fnmatch.fnmatchcase(name, f"*{glob}")
