"""Block-wise reconstruction: train a pruned block's kept weights so that its outputs match the dense
block's, with its mask fixed.

The block is fed the pruned model's inputs and trained towards the dense block's outputs on the dense
model's inputs, so it also corrects the error carried in from the blocks pruned before it. Nothing here
knows what a block is: the caller gives the parameters to train, a forward over one micro-batch and its
target, which keeps this usable on any device and with streamed blocks (only one block and its
optimizer state are ever alive).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..events import Job, RecoveryStep
from .options import RecoveryOptions

# (pipeline batch, first window, end window): a slice of one of the pipeline's calibration batches.
MicroBatch = tuple[int, int, int]
MEASURED_WINDOWS = 8


@dataclass
class RecoveryCurve:
    """What recovering one block did: relative output error ‖f(X) − T‖² / ‖T‖² on the first calibration
    windows before and after (for e2e: the KL to the dense model), and the loss of every step."""

    block: int
    before: float
    after: float
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    def describe(self) -> dict:
        return {"block": self.block, "before": self.before, "after": self.after, "steps": self.steps,
                "seconds": self.seconds}


def micro_batches(windows_per_batch: Sequence[int], batch_windows: int) -> list[MicroBatch]:
    """Cut each pipeline batch (of the given number of windows) into slices of at most `batch_windows`."""
    return [(b, start, min(start + batch_windows, size))
            for b, size in enumerate(windows_per_batch) for start in range(0, size, batch_windows)]


def recover(
    block: int,
    parameters: Sequence[nn.Parameter],
    forward: Callable[[MicroBatch], torch.Tensor],
    target: Callable[[MicroBatch], torch.Tensor],
    batches: Sequence[MicroBatch],
    options: RecoveryOptions,
    job: Job,
) -> RecoveryCurve:
    """Adam on the relative squared error, one micro-batch per step, the zeros of every parameter kept
    exactly zero (their gradients are masked and they are reset after every step).

    `forward` must build a graph (it is called with gradients on); `parameters` are the only ones that
    get `requires_grad`; each must already be in float32.
    """
    started = time.perf_counter()
    frozen = [p.detach() == 0 for p in parameters]
    measured = _measured(batches)
    scale = _target_scale(target, batches)
    before = _relative_error(forward, target, measured, scale, job)
    total = options.total_steps(sum(stop - start for _, start, stop in batches))
    optimizer = torch.optim.Adam(parameters, lr=options.learning_rate)
    generator = torch.Generator().manual_seed(block)
    order: list[int] = []
    losses = []
    for step in range(total):
        job.check()
        if not order:
            order = torch.randperm(len(batches), generator=generator).tolist()
        batch = batches[order.pop()]
        with torch.enable_grad():
            loss = (forward(batch) - target(batch)).float().pow(2).mean() / scale
        losses.append(masked_step(loss, optimizer, parameters, frozen))
        job.emit(RecoveryStep(block, step + 1, total, losses[-1]))
        job.phase("recover", step + 1, total, f"block {block} loss {losses[-1]:.3g}")
    del optimizer
    after = _relative_error(forward, target, measured, scale, job)
    return RecoveryCurve(block, before, after, total, time.perf_counter() - started, losses)


def recover_in_float32(index: int, block: nn.Module, parameters: Sequence[nn.Parameter],
                       forward: Callable[[MicroBatch], torch.Tensor], target: Callable[[MicroBatch], torch.Tensor],
                       batches: Sequence[MicroBatch], options: RecoveryOptions, job: Job) -> RecoveryCurve:
    """`recover` on a block that may compute in half precision: the block trains in float32 with only
    `parameters` taking gradients, and afterwards has its dtype and every parameter's `requires_grad` back
    (also on cancel). `forward` must feed the block float32 inputs."""
    dtype = next(block.parameters()).dtype
    grad_before = {p: p.requires_grad for p in block.parameters()}
    if dtype != torch.float32:
        block.float()
    try:
        for p in block.parameters():
            p.requires_grad_(False)
        for p in parameters:
            p.requires_grad_(True)
        job.phase("recover", 0, options.total_steps(sum(stop - start for _, start, stop in batches)),
                  f"block {index}")
        return recover(index, parameters, forward, target, batches, options, job)
    finally:
        for p, flag in grad_before.items():
            p.requires_grad_(flag)
            p.grad = None
        if dtype != torch.float32:
            block.to(dtype)


def masked_step(loss: torch.Tensor, optimizer, parameters, frozen) -> float:
    """One optimizer step on `loss` in which the positions `frozen` (the pruned zeros) neither get a gradient
    nor move: their gradients are masked and they are reset to exactly zero after the step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p, zero in zip(parameters, frozen):
        p.grad.masked_fill_(zero, 0)
    optimizer.step()
    with torch.no_grad():
        for p, zero in zip(parameters, frozen):
            p.masked_fill_(zero, 0)
    return loss.item()


def _measured(batches: Sequence[MicroBatch]) -> list[MicroBatch]:
    """The micro-batches holding the first MEASURED_WINDOWS windows: the error before and after is
    measured on those (a pass over all windows would cost a third of the training itself)."""
    chosen, windows = [], 0
    for batch in batches:
        if windows >= MEASURED_WINDOWS:
            break
        chosen.append(batch)
        windows += batch[2] - batch[1]
    return chosen


@torch.no_grad()
def _target_scale(target, batches) -> float:
    """Mean square of the targets: the loss becomes a relative error, comparable across blocks."""
    total, count = 0.0, 0
    for batch in batches:
        t = target(batch).float()
        total += float(t.pow(2).sum())
        count += t.numel()
    return max(total / max(count, 1), 1e-30)


@torch.no_grad()
def _relative_error(forward, target, batches, scale, job: Job) -> float:
    total, count = 0.0, 0
    for batch in batches:
        job.check()
        difference = (forward(batch) - target(batch)).float()
        total += float(difference.pow(2).sum())
        count += difference.numel()
    return total / max(count, 1) / scale
