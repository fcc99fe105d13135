"""Recovery of a shrunk model, with the trainers of `core.recovery` (no second trainer here).

Blockwise: right after a block is shrunk, every weight it kept (the seven projections, and the biases FLAP's
compensation filled) trains so that its outputs on the shrunk model's inputs match the dense block's outputs
on the dense model's inputs, the targets computed before the cut. There is no mask to keep: a shrunk layer is
dense, so `core.recovery.blockwise.recover` freezes only weights that happen to be exactly zero (the zero
biases the config's bias flag adds to q/k/v and gate/up stay zero, as transformers would build them).
End to end: the whole shrunk model against the unshrunk one's token distributions
(`core.recovery.e2e.recover_model`), the teacher a copy kept for the run.
"""

from __future__ import annotations

import torch
from torch import nn

from ...events import BlockRecovered, Job
from ...recovery.blockwise import RecoveryCurve, micro_batches, recover_in_float32
from ...recovery.e2e import recover_model
from ...recovery.options import RecoveryOptions
from ..activations import ActivationStore
from ..capture import run_block
from .surgery import ATTENTION_LAYERS, MLP_LAYERS


def trained_parameters(block: nn.Module) -> list[nn.Parameter]:
    """A shrunk block's projection weights, and the biases that carry compensation (down_proj, o_proj)."""
    layers = [getattr(block.mlp, n) for n in MLP_LAYERS] + [getattr(block.self_attn, n) for n in ATTENTION_LAYERS]
    compensated = [block.mlp.down_proj.bias, block.self_attn.o_proj.bias]
    return [layer.weight for layer in layers] + [b for b in compensated if b is not None]


@torch.no_grad()
def dense_targets(block: nn.Module, dense_inputs: ActivationStore, calls, job: Job) -> ActivationStore:
    """The block's outputs before it is shrunk, on the dense model's inputs: what recovery aims at."""
    targets = ActivationStore()
    for batch in range(len(calls)):
        job.check()
        targets.append(run_block(block, dense_inputs[batch], calls[batch]))
    return targets


def recover_block(index: int, block: nn.Module, inputs: ActivationStore, targets: ActivationStore, calls,
                  options: RecoveryOptions, job: Job) -> RecoveryCurve:
    """Train a shrunk block towards `targets` in float32 (whatever it computes in), then back to its dtype."""
    sizes = [inputs[b].shape[0] for b in range(len(inputs))]
    device = next(block.parameters()).device
    if next(block.parameters()).dtype != torch.float32:
        calls = [c.to(device, torch.float32) for c in calls]
    trained = trained_parameters(block)

    def forward(micro):
        b, start, stop = micro
        return run_block(block, inputs[b][start:stop].to(device, torch.float32), calls[b].windows(start, stop, sizes[b]))

    def target(micro):
        b, start, stop = micro
        return targets[b][start:stop].to(device, torch.float32)

    micro = micro_batches(sizes, options.batch_windows)
    curve = recover_in_float32(index, block, trained, forward, target, micro, options, job)
    job.emit(BlockRecovered(index, curve))
    return curve


def recover_end_to_end(model: nn.Module, teacher: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor,
                       options: RecoveryOptions, job: Job) -> RecoveryCurve:
    """Every shrunk block's kept weights trained against the unshrunk model's next-token distributions."""
    parameters = [p for block in blocks for p in trained_parameters(block)]
    device = next(model.parameters()).device
    job.message(f"end-to-end recovery of {len(parameters)} tensors on {input_ids.shape[0]} windows")
    curve = recover_model(model, teacher, parameters, input_ids, options, job, device)
    job.emit(BlockRecovered(-1, curve))
    return curve
