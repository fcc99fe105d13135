"""End-to-end recovery: masked fine-tuning of the whole pruned model against the dense model's token
distributions (KL divergence on the calibration windows), for models that fit twice in memory.

The teacher is the dense model itself (a copy kept for the run); only the pruned linear layers' kept
weights train, and their zeros stay exactly zero (masked gradients, reset after every step).
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..compute import resolve_device
from ..events import BlockRecovered, Job, RecoveryStep
from ..models.architectures import weight_matrix
from ..patterns import follows_pattern
from .blockwise import RecoveryCurve, masked_step
from .options import RecoveryOptions

MEASURED_WINDOWS = 8      # windows the KL before and after is measured on


def recover_pruned_model(model: nn.Module, teacher: nn.Module, input_ids: torch.Tensor, result, job: Job) -> None:
    """Recover the layers a run (`result`, a `core.pruning.pipeline.PruneResult`) pruned, with its plan's
    options and device; check every mask afterwards and record the curve in `result.recovery`."""
    parameters = [model.get_submodule(layer.name).weight for layer in result.layers]
    job.message(f"end-to-end recovery of {len(parameters)} layers on {input_ids.shape[0]} windows")
    curve = recover_model(model, teacher, parameters, input_ids, result.plan.recovery, job,
                          resolve_device(result.plan.device))
    for layer in result.layers:
        pattern = result.plan.pattern_for(layer.block)
        if not follows_pattern(weight_matrix(model.get_submodule(layer.name)), pattern):
            raise AssertionError(f"{layer.name} breaks {pattern} after recovery")
    result.recovery = [curve]
    job.emit(BlockRecovered(-1, curve))


def recover_model(
    student: nn.Module,
    teacher: nn.Module,
    parameters: Sequence[nn.Parameter],
    input_ids: torch.Tensor,
    options: RecoveryOptions,
    job: Job,
    device: torch.device,
) -> RecoveryCurve:
    """Adam on KL(teacher ‖ student) per token, one micro-batch of windows per step. Both models run on
    `device` in float32 for the run and go back to where and what they were."""
    started = time.perf_counter()
    homes = [(m, next(m.parameters()).device, next(m.parameters()).dtype) for m in (student, teacher)]
    grad_before = {p: p.requires_grad for p in student.parameters()}
    try:
        for model in (student, teacher):
            model.to(device, torch.float32)
            model.eval()
        for p in student.parameters():
            p.requires_grad_(False)
        for p in parameters:
            p.requires_grad_(True)
        curve = _train(student, teacher, list(parameters), input_ids, options, job, device)
    finally:
        for p, flag in grad_before.items():
            p.requires_grad_(flag)
            p.grad = None
        for model, home, dtype in homes:
            model.to(home, dtype)
    curve.seconds = time.perf_counter() - started
    return curve


def _train(student, teacher, parameters, input_ids, options: RecoveryOptions, job: Job, device) -> RecoveryCurve:
    frozen = [p.detach() == 0 for p in parameters]
    windows = input_ids.shape[0]
    measured = input_ids[:MEASURED_WINDOWS]
    total = options.total_steps(windows)
    job.phase("recover", 0, total, "measuring the KL before")
    before = _kl_over(student, teacher, measured, options.batch_windows, job, device)
    optimizer = torch.optim.Adam(parameters, lr=options.learning_rate)
    generator = torch.Generator().manual_seed(0)
    order: list[int] = []
    losses = []
    for step in range(total):
        job.check()
        if not order:
            order = torch.randperm(windows, generator=generator).tolist()
        take = [order.pop() for _ in range(min(options.batch_windows, len(order)))]
        batch = input_ids[take].to(device)
        with torch.no_grad():
            target = teacher(input_ids=batch, use_cache=False).logits.float()
        with torch.enable_grad():
            loss = kl_per_token(student(input_ids=batch, use_cache=False).logits.float(), target)
        losses.append(masked_step(loss, optimizer, parameters, frozen))
        job.emit(RecoveryStep(-1, step + 1, total, losses[-1]))
        job.phase("recover", step + 1, total, f"KL {losses[-1]:.3g}")
    del optimizer
    after = _kl_over(student, teacher, measured, options.batch_windows, job, device)
    return RecoveryCurve(-1, before, after, total, 0.0, losses)


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student) between the next-token distributions."""
    vocab = student_logits.shape[-1]
    return F.kl_div(F.log_softmax(student_logits.reshape(-1, vocab), -1),
                    F.log_softmax(teacher_logits.reshape(-1, vocab), -1), log_target=True, reduction="batchmean")


@torch.no_grad()
def _kl_over(student, teacher, input_ids, batch_windows, job: Job, device) -> float:
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], batch_windows):
        job.check()
        batch = input_ids[start:start + batch_windows].to(device)
        kl = kl_per_token(student(input_ids=batch, use_cache=False).logits.float(),
                          teacher(input_ids=batch, use_cache=False).logits.float())
        tokens = batch.numel()
        total, count = total + float(kl) * tokens, count + tokens
    return total / max(count, 1)
