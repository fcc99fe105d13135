"""The block loop of a structured shrink, on a model in memory, changed in place.

Block by block, as the pruning pipeline does (`core.pruning.pipeline`): the calibration windows' inputs
of block k (the outputs of the already shrunk block k−1) run through it while hooks gather per-channel
statistics of what down_proj and o_proj receive; the lowest-scoring MLP channels and key/value groups
are cut (the same count in every block); with blockwise recovery the shrunk block then trains towards the
dense block's outputs (`recover.py`); it then produces block k+1's inputs. End-to-end recovery trains the
whole shrunk model against a copy of the unshrunk one afterwards. It reuses the pipeline's capture and
block call (`core.pruning.capture`) and computes in the model's own dtype and device. A cancel or an error
leaves the model partly shrunk: the caller shrinks a copy (the studio) or drops the model (the command line).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ...data.calibration import CalibrationSet
from ...errors import UserError
from ...events import BlockStarted, Job, as_job
from ...models.architectures import find_layout
from ...models.loaded import LoadedModel, check_window_length
from ...recovery.blockwise import RecoveryCurve
from ...recovery.options import RecoveryOptions
from .. import finite
from ..activations import ActivationStore
from ..capture import auto_batch_size, capture_first_block_inputs, run_block
from .importance import ChannelStats, channel_scores, group_scores, lowest
from .recover import dense_targets, recover_block, recover_end_to_end
from .spec import BIAS_FLAGS, CRITERIA, Counts, StructureSpec, check_family, counts as spec_counts
from .surgery import give_biases, shrink_attention, shrink_mlp, update_config


@dataclass
class BlockShrunk:
    index: int
    channels: list[int]      # MLP intermediate channels removed
    groups: list[int]        # key/value groups removed (each with its query heads)


@dataclass
class ShrinkResult:
    spec: StructureSpec
    counts: Counts
    blocks: list[BlockShrunk]
    parameters_before: int
    parameters_after: int
    linear_before: int            # parameters of the blocks' linear layers
    linear_after: int
    compensated: dict = field(default_factory=dict)   # {"mlp": bool, "attention": bool}
    seconds: float = 0.0
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    curves: list[RecoveryCurve] = field(default_factory=list)   # per block (blockwise) or one (e2e, block -1)

    @property
    def removed_fraction(self) -> float:
        return 1 - self.parameters_after / self.parameters_before

    def describe(self) -> dict:
        c = self.counts
        return {
            "structure": self.spec.describe(), "criterion": self.spec.criterion,
            "criterion_formula": CRITERIA[self.spec.criterion], "bias_compensation": self.compensated,
            "intermediate_size": [c.intermediate, c.intermediate - c.channels],
            "num_attention_heads": [c.heads, c.heads - c.groups * c.group_size],
            "num_key_value_heads": [c.kv_heads, c.kv_heads - c.groups], "head_dim": c.head_dim,
            "parameters": [self.parameters_before, self.parameters_after],
            "block_linear_parameters": [self.linear_before, self.linear_after],
            "blocks": [{"index": b.index, "channels_removed": b.channels, "groups_removed": b.groups}
                       for b in self.blocks],
            "seconds": self.seconds, "recovery": self.recovery.describe(),
            "recovery_blocks": [c.describe() for c in self.curves],
        }


def compensation(config, spec: StructureSpec, counts: Counts) -> dict:
    """Which parts get FLAP's bias: only where the family's config can give those projections a bias."""
    able = spec.compensate and check_family(config) in BIAS_FLAGS
    return {"mlp": able and counts.channels > 0, "attention": able and counts.groups > 0}


@torch.no_grad()
def shrink(loaded: LoadedModel, calib: CalibrationSet, spec: StructureSpec, job: Job | None = None, *,
           batch_size: int | None = None, recovery: RecoveryOptions | None = None,
           teacher: nn.Module | None = None) -> ShrinkResult:
    """Shrink `loaded.model` in place by `spec`, then recover it as `recovery` says (e2e against `teacher`, the
    unshrunk model, or a copy made here); its config and layout are updated at the end."""
    model, config = loaded.model, loaded.model.config
    counts = spec_counts(config, spec)
    check_window_length(config, calib.seqlen)
    recovery = recovery or RecoveryOptions()
    recovery.validate()
    job = as_job(job)
    if recovery.mode == "e2e" and teacher is None:
        teacher = copy.deepcopy(model)
    started = time.perf_counter()
    bias = compensation(config, spec, counts)
    blocks = loaded.layout.blocks
    before, linear_before = _parameters(model), loaded.layout.prunable_parameters
    device = next(blocks.parameters()).device
    inputs = ActivationStore()
    calls = capture_first_block_inputs(model, blocks, calib.input_ids, device,
                                       batch_size or auto_batch_size(calib.seqlen), job, inputs)
    blockwise = recovery.mode == "blockwise"
    dense_inputs = inputs if blockwise else None      # the dense model's inputs to the current block
    shrunk, curves = [], []
    for index, block in enumerate(blocks):
        job.check()
        job.emit(BlockStarted(index, len(blocks)))
        targets = dense_targets(block, dense_inputs, calls, job) if blockwise else None
        channels, groups = _shrink_block(block, index, inputs, calls, counts, spec, bias, job)
        shrunk.append(BlockShrunk(index, channels, groups))
        if blockwise:
            curves.append(recover_block(index, block, inputs, targets, calls, recovery, job))
            if dense_inputs is not inputs:
                dense_inputs.close()
            dense_inputs = targets
        inputs = _propagate(block, index, inputs, calls, job)
    inputs.close()
    if dense_inputs is not None:
        dense_inputs.close()
    update_config(config, counts, bias["mlp"], bias["attention"])
    loaded.layout = find_layout(model)
    if recovery.mode == "e2e":
        curves.append(recover_end_to_end(model, teacher, blocks, calib.input_ids, recovery, job))
    return ShrinkResult(spec, counts, shrunk, before, _parameters(model), linear_before,
                        loaded.layout.prunable_parameters, bias, time.perf_counter() - started, recovery, curves)


def _shrink_block(block: nn.Module, index: int, inputs, calls, counts: Counts, spec: StructureSpec, bias: dict,
                  job: Job) -> tuple[list[int], list[int]]:
    job.phase("gather statistics", 0, 1, f"block {index}")
    down, out = ChannelStats(block.mlp.down_proj), ChannelStats(block.self_attn.o_proj)
    try:
        for batch in range(len(calls)):
            job.check()
            run_block(block, inputs[batch], calls[batch])
    finally:
        down.close()
        out.close()
    job.phase("shrink", 0, 1, f"block {index}")
    channels = lowest(channel_scores(block.mlp.down_proj.weight, down, spec.criterion), counts.channels)
    scores = channel_scores(block.self_attn.o_proj.weight, out, spec.criterion)
    groups = lowest(group_scores(scores, counts.kv_heads), counts.groups)
    shrink_mlp(block.mlp, channels, down, bias["mlp"])
    shrink_attention(block.self_attn, groups, counts.group_size, counts.head_dim, out, bias["attention"])
    give_biases(block, bias["mlp"], bias["attention"])
    return channels, groups


def _propagate(block: nn.Module, index: int, inputs: ActivationStore, calls, job: Job) -> ActivationStore:
    """The shrunk block's outputs: the next block's inputs."""
    job.phase("propagate", 0, 1, f"block {index}")
    outputs = ActivationStore()
    for batch in range(len(calls)):
        job.check()
        out = run_block(block, inputs[batch], calls[batch])
        if not finite.finite(out):
            raise UserError(f"block {index} gives NaN or Inf once shrunk ({finite.count(out)}): load the "
                            f"model with --dtype float32 or remove a smaller fraction.")
        outputs.append(out)
    inputs.close()
    return outputs


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
