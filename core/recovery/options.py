"""What the user chooses about recovery, validated once."""

from __future__ import annotations

import math

from dataclasses import dataclass

from ..errors import UserError

MODES = ("none", "blockwise", "e2e")


@dataclass(frozen=True)
class RecoveryOptions:
    """`blockwise`: each pruned block trained to reproduce the dense block's outputs, right after it is
    pruned. `e2e`: the whole pruned model trained against the dense model's token distributions.

    Defaults measured on the demo model (see benchmarks/quality.py): blockwise, 1 epoch over the
    calibration windows in steps of 2 windows at a learning rate of 1e-3.
    """

    mode: str = "none"
    epochs: float = 1.0            # passes over the calibration windows (ignored when `steps` is set)
    steps: int = 0                 # optimizer steps per block (blockwise) or in all (e2e); 0: from `epochs`
    learning_rate: float = 1e-3
    batch_windows: int = 2         # calibration windows per optimizer step

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown recovery {self.mode!r}: choose one of {', '.join(MODES)}.")
        if not self.enabled:
            return
        if not math.isfinite(self.epochs) or self.epochs > 1e6:
            raise UserError(f"recovery epochs {self.epochs:g}: give a finite number of passes (e.g. --recover-epochs 2).")
        if not math.isfinite(self.learning_rate):
            raise UserError(f"recovery learning rate {self.learning_rate:g} must be a finite positive number (e.g. 1e-4).")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise UserError("recovery needs a positive number of steps or epochs (e.g. --recover-epochs 2).")
        if not self.learning_rate > 0:
            raise UserError(f"recovery learning rate {self.learning_rate:g} must be positive (e.g. 1e-4).")
        if self.batch_windows < 1:
            raise UserError(f"recovery batch of {self.batch_windows} windows: give at least 1.")

    def total_steps(self, windows: int) -> int:
        """Optimizer steps for `windows` calibration windows."""
        if self.steps:
            return self.steps
        per_epoch = -(-windows // self.batch_windows)
        return max(1, round(self.epochs * per_epoch))

    def describe(self) -> dict | None:
        return dict(vars(self)) if self.enabled else None
