"""One block's turn in the pipeline, and the passes that run over its activations besides pruning:
capturing the first block's inputs, OWL's dense survey of outlier ratios, the dense targets of block-wise
recovery and the recovery itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..events import BlockRecovered, Job
from ..models.architectures import weight_matrix
from ..patterns import follows_pattern
from ..recovery.blockwise import micro_batches, recover_in_float32
from . import allocation
from .activations import ActivationStore
from .capture import BlockCall, capture_first_block_inputs, run_block
from .methods import wanda
from .plan import PrunePlan
from .stats import COLUMN_NORMS, StatsCollector


@dataclass
class Turn:
    """One block's turn: the block on its device and the activations going in and out."""

    index: int
    block: nn.Module
    device: torch.device
    compute: torch.dtype          # dtype the block computes in
    storage: torch.dtype          # dtype the model stores weights in, and activations between blocks
    inputs: ActivationStore
    outputs: ActivationStore
    calls: list[BlockCall]
    source: object                          # a `pipeline.BlockSource`
    targets: ActivationStore | None = None   # the dense block's outputs on the dense inputs (recovery only)

    def hidden(self, batch: int) -> torch.Tensor:
        return self.inputs[batch].to(self.device, self.compute)

    def run(self, batch: int) -> torch.Tensor:
        return run_block(self.block, self.hidden(batch), self.calls[batch])


def run_gathering(turn: Turn, modules: dict, needs, job: Job) -> dict:
    """Run the dense block over every batch into `turn.outputs`, gathering `needs` of `modules` on the way."""
    collector = StatsCollector(modules, needs)
    try:
        with torch.no_grad():
            for batch in range(len(turn.calls)):
                job.check()
                turn.outputs.append(turn.run(batch).to(turn.storage))
    finally:
        stats = collector.close()
    return stats


def capture(source, calib, placements, budget, batch_size, job: Job):
    """The first block's inputs (into a new store) and the other arguments of its calls."""
    first = torch.device(placements[0].device)
    source.prepare(first)
    inputs = budget.new_store()
    raw_calls = capture_first_block_inputs(source.model, source.layout.blocks, calib.input_ids, first, batch_size,
                                           job, inputs)
    source.release_outside()
    return inputs, raw_calls


def survey_outliers(source, calib, plan: PrunePlan, placements, budget, batch_size, compute, job: Job) -> list[float]:
    """OWL's outlier ratio of every block, measured on the dense model: one forward pass over the
    calibration windows, block by block, gathering the input column norms that Wanda's scores need."""
    inputs, raw_calls = capture(source, calib, placements, budget, batch_size, job)
    ratios = []
    try:
        for index, placement in enumerate(placements):
            job.check()
            job.phase("survey outliers", index, len(placements), f"block {index}")
            here = torch.device(placement.device)
            calls = [c.to(here, compute) for c in raw_calls]
            block = source.load(index, here, compute)
            modules = {info.name: block.get_submodule(info.name) for info in source.layout.inventory[index].linears
                       if plan.target_for(info.full_name) is not None}
            outputs = budget.new_store()
            turn = Turn(index, block, here, compute, source.storage_dtype, inputs, outputs, calls, source)
            stats = run_gathering(turn, modules, {COLUMN_NORMS}, job)
            scores = [wanda.scores(weight_matrix(layer).float(), stats[name].column_norms.to(here))
                      for name, layer in modules.items()]
            ratios.append(allocation.outlier_ratio(scores, plan.allocation.owl_threshold) if scores else 0.0)
            del scores, stats
            source.unload(index, block)
            inputs.close()
            inputs = outputs
        job.phase("survey outliers", len(placements), len(placements))
    finally:
        inputs.close()
    return ratios


@torch.no_grad()
def dense_outputs(turn: "Turn", dense_inputs, budget, job: Job):
    """The block's outputs, before it is pruned, on the dense model's inputs: what recovery aims at."""
    job.phase("dense targets", 0, 1, f"block {turn.index}")
    targets = budget.new_store()
    for batch in range(len(turn.calls)):
        job.check()
        hidden = dense_inputs[batch].to(turn.device, turn.compute)
        targets.append(run_block(turn.block, hidden, turn.calls[batch]).to(turn.storage))
    return targets


def recover_block(turn: Turn, modules: dict[str, nn.Module], plan: PrunePlan, pattern, sizes: list[int], job: Job):
    """Train the pruned layers' kept weights towards the dense block's outputs (in float32, whatever the
    block computes in), then round them to the stored dtype as pruning does."""
    options = plan.recovery
    micro = micro_batches(sizes, options.batch_windows)
    block = turn.block
    trained = [layer.weight for layer in modules.values()]
    if turn.compute == torch.float32:
        calls = turn.calls
    else:
        calls = [c.to(turn.device, torch.float32) for c in turn.calls]

    def forward(micro):
        b, start, stop = micro
        hidden = turn.inputs[b][start:stop].to(turn.device, torch.float32)
        return run_block(block, hidden, calls[b].windows(start, stop, sizes[b]))

    def target(micro):
        b, start, stop = micro
        return turn.targets[b][start:stop].to(turn.device, torch.float32)

    curve = recover_in_float32(turn.index, block, trained, forward, target, micro, options, job)
    with torch.no_grad():
        for name, layer in modules.items():
            layer.weight.data = layer.weight.data.to(turn.storage).to(layer.weight.dtype)
            assert follows_pattern(weight_matrix(layer), pattern), f"{name} breaks {pattern} after recovery"
    job.emit(BlockRecovered(turn.index, curve))
    return curve
