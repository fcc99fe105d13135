"""The sequential pruning loop: the only place that knows about block order, devices and cancellation.

For each decoder block: run it over the current inputs while hooks gather what the method needs,
prune its linear layers, then run the pruned block to produce the next block's inputs (so block
k+1 is calibrated on the outputs of the already-pruned block k). Only the current block sits on
the compute device. A cancel or an error restores every weight changed so far; NaN or Inf stops the run
where it first appears, naming that layer or block (`core.pruning.finite`).

There is one loop, `prune_blocks`, fed by a *block source*: `core.pruning.in_memory.InMemoryBlocks` (a
loaded model, pruned in place; `prune`) or `core.models.streaming.StreamedBlocks` (blocks read from
safetensors onto a meta-device skeleton when their turn comes). An optional *block sink* receives every
block once it is pruned (`core.export.streaming` writes its tensors there). Activations between blocks stay in the model's
dtype (`core.activations`); each block computes in `compute_dtype` (float32 on the CPU by default).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Mapping, Protocol

import torch
from torch import nn

from ..compute import resolve_device
from ..data.calibration import CalibrationSet
from ..events import AllocationChosen, BlockStarted, Finished, Job, LayerPruned, as_job
from ..models.architectures import set_weight_matrix, weight_matrix
from ..models.loaded import LoadedModel, check_window_length
from ..patterns import follows_pattern, sparsity_of
from ..recovery.blockwise import RecoveryCurve
from . import allocation, finite, quantize_step
from .activations import ActivationBudget, hidden_bytes
from .capture import BlockCall, auto_batch_size, batches
from .footprint import working_bytes
from .in_memory import InMemoryBlocks
from .methods import METHODS, MethodResult
from .methods.sparsegpt import NotPositiveDefinite
from .passes import Turn, capture, dense_outputs, recover_block, survey_outliers
from .placement import block_devices
from .plan import PrunePlan
from .stats import StatsCollector, StopBlock

# Makes the display summary of a pruned layer from its weight before and the method's result (the
# studio passes `core.analysis.summaries.summarize`); None: no summaries.
Summarize = Callable[[torch.Tensor, MethodResult], object]


@dataclass
class LayerResult:
    name: str
    block: int
    shape: tuple[int, int]
    target_sparsity: float
    sparsity: float              # achieved: fraction of exact zeros in the pruned weight
    error: float | None          # ‖(W − Ŵ)X‖² / ‖WX‖² on `error_tokens` calibration tokens
    error_tokens: int
    seconds: float
    notes: dict = field(default_factory=dict)
    quant_error: float | None = None   # quantization's own share: ‖(W_pruned − Ŵ)X‖² / ‖W_pruned X‖²


@dataclass(frozen=True)
class SkippedLayer:
    name: str
    reason: str


@dataclass
class PruneResult:
    plan: PrunePlan
    device: str
    layers: list[LayerResult]
    skipped: list[SkippedLayer]
    seconds: float
    recovery: list[RecoveryCurve] = field(default_factory=list)
    quantized: dict = field(default_factory=dict, repr=False)   # full layer name -> QuantizedLayer

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over all pruned layers, weighted by their parameters."""
        total = sum(l.shape[0] * l.shape[1] for l in self.layers)
        zeros = sum(l.sparsity * l.shape[0] * l.shape[1] for l in self.layers)
        return zeros / total if total else 0.0

    def describe(self) -> dict:
        return {
            **self.plan.describe(),
            "device": self.device,
            "achieved_sparsity": self.sparsity,
            "layers": [asdict(l) for l in self.layers],
            "skipped": [asdict(s) for s in self.skipped],
            "seconds": self.seconds,
            "recovery_blocks": [c.describe() for c in self.recovery],
            "quantized_layers": len(self.quantized),
        }


class BlockSource(Protocol):
    """Where the blocks come from and go back to; `restores` tells whether a cancel must restore weights."""

    model: nn.Module
    layout: object
    storage_dtype: torch.dtype
    restores: bool

    def prepare(self, device: torch.device) -> None: ...            # what runs before block 0, on `device`
    def release_outside(self) -> None: ...                            # ... no longer needed once captured
    def remember(self, full_name: str, layer: nn.Module) -> None: ...  # before a layer is changed
    def dense_matrix(self, full_name: str, layer: nn.Module) -> torch.Tensor: ...  # its weight before, [out, in]
    def restore(self) -> None: ...                                    # undo every change (cancel, error)
    def load(self, index: int, device: torch.device, dtype: torch.dtype) -> nn.Module: ...
    def unload(self, index: int, block: nn.Module) -> None: ...
    def close(self) -> None: ...                                      # every tensor back where it lived


class BlockSink(Protocol):
    def write_block(self, index: int, block: nn.Module) -> None: ...


def default_compute_dtype(storage: torch.dtype, device: torch.device) -> torch.dtype:
    """float32 on the CPU (its half-precision kernels are slow or missing for many ops); the model's dtype on a GPU."""
    return torch.float32 if device.type == "cpu" else storage


def prune(
    loaded: LoadedModel,
    calib: CalibrationSet,
    plan: PrunePlan,
    job: Job | None = None,
    *,
    summarize: Summarize | None = None,
    memory_budget: int | None = None,
    compute_dtype: torch.dtype | None = None,
    dense: Mapping[str, torch.Tensor] | None = None,
) -> PruneResult:
    """Prune `loaded.model` in place; on cancel (`Cancelled`) or any error every weight is restored.

    `dense`: the current weights as [out, in] matrices by full layer name, when the caller already keeps
    a copy (it must equal the model's weights); the run then keeps none of its own."""
    return prune_blocks(InMemoryBlocks(loaded, dense), calib, plan, job, summarize=summarize,
                        memory_budget=memory_budget, compute_dtype=compute_dtype)


def prune_blocks(
    source: BlockSource,
    calib: CalibrationSet,
    plan: PrunePlan,
    job: Job | None = None,
    *,
    summarize: Summarize | None = None,
    sink: BlockSink | None = None,
    memory_budget: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> PruneResult:
    """The block loop shared by every source. `memory_budget` (bytes) bounds one block's inputs plus
    outputs in memory; past it they spill to disk."""
    plan.validate()
    check_window_length(source.model.config, calib.seqlen)
    job = as_job(job)
    device = resolve_device(plan.device)
    layout = source.layout
    compute = compute_dtype or default_compute_dtype(source.storage_dtype, device)
    started = time.perf_counter()
    per_store = hidden_bytes(calib.nsamples, calib.seqlen, source.model.config.hidden_size, source.storage_dtype)
    budget = ActivationBudget(memory_budget, per_store)
    batch_size = plan.batch_size or auto_batch_size(calib.seqlen)
    placements = block_devices(device, plan.device, [_block_bytes(b, compute) for b in layout.blocks],
                               working_bytes(layout, per_store, batch_size / calib.nsamples, plan),
                               keep_resident=source.restores)
    recovering = plan.recovery.mode == "blockwise"
    try:
        if budget.spill:
            job.message(f"activations ({2 * per_store / 2**20:.0f} MiB for a block's inputs and outputs) "
                        f"exceed the memory budget: they are kept on disk")
        if plan.allocation.kind == "owl":
            ratios = survey_outliers(source, calib, plan, placements, budget, batch_size, compute, job)
            plan = replace(plan, blocks=allocation.owl(ratios, plan.sparsity, plan.pattern, plan.allocation))
            job.emit(AllocationChosen(plan.blocks))
        elif plan.allocation.kind in allocation.PRESET and plan.blocks is None:
            block_params = [sum(info.parameters for info in block.linears) for block in layout.inventory]
            plan = replace(plan, blocks=allocation.preset(plan.allocation, block_params, plan.sparsity, plan.pattern))
            job.emit(AllocationChosen(plan.blocks))
        inputs, raw_calls = capture(source, calib, placements, budget, batch_size, job)
        dense_inputs = inputs if recovering else None   # the dense model's inputs to the current block
        sizes = [len(chunk) for chunk in batches(calib.input_ids, batch_size)]   # windows per batch
        calls_on: dict[str, list[BlockCall]] = {}
        layers, skipped, curves, quantized = [], [], [], {}
        for index, placement in enumerate(placements):
            job.check()
            job.emit(BlockStarted(index, len(layout.blocks)))
            here = torch.device(placement.device)
            if placement.device not in calls_on:
                calls_on[placement.device] = [c.to(here, compute) for c in raw_calls]
            calls = calls_on[placement.device]
            block = source.load(index, here, compute)
            finite.check_block(block, layout.inventory[index].name)
            outputs = budget.new_store()
            turn = Turn(index, block, here, compute, source.storage_dtype, inputs, outputs, calls, source)
            if recovering:
                turn.targets = dense_outputs(turn, dense_inputs, budget, job)
                finite.check_targets(turn.targets, layout.inventory[index].name, compute)
            results, curve, records = _prune_block(turn, layout, plan, skipped, job, summarize, sizes)
            quantized.update(records)
            if sink is not None:
                sink.write_block(index, block)
            if not placement.resident:
                source.unload(index, block)
            if recovering:
                if dense_inputs is not inputs:
                    dense_inputs.close()
                dense_inputs = turn.targets
            inputs.close()
            inputs = outputs
            layers.extend(results)
            if curve is not None:
                curves.append(curve)
            _return_freed_memory()
        inputs.close()
        if dense_inputs is not None and dense_inputs is not inputs:
            dense_inputs.close()
        devices = sorted({p.device for p in placements})
        result = PruneResult(plan, ",".join(devices), layers, skipped, time.perf_counter() - started, curves,
                             quantized)
    except BaseException:
        source.restore()
        raise
    finally:
        source.close()
        budget.close()
    job.emit(Finished(result))
    return result


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS between phases (glibc only). Tensors under glibc's mmap
    threshold (up to 32 MB) live in the heap; without this, fragmentation grew a streamed 1.1B model's
    resident set by about 50 MB per block."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")


def _block_bytes(block: nn.Module, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() * (size if p.is_floating_point() else p.element_size()) for p in block.parameters())


def _prune_block(turn: Turn, layout, plan, skipped, job: Job, summarize: Summarize | None, sizes: list[int]):
    index, block, prefix = turn.index, turn.block, layout.inventory[turn.index].name
    method = METHODS[plan.method]
    pattern = plan.pattern_for(index)
    targets = {}
    for info in layout.inventory[index].linears:
        target = plan.target_for(info.full_name, index)
        if target is None:
            ignored = plan.target_for(info.full_name) is None
            skipped.append(SkippedLayer(info.full_name, "in the ignore list" if ignored else "dense by the allocation"))
        elif not pattern.fits(info.in_features):
            skipped.append(SkippedLayer(info.full_name, f"input dimension {info.in_features} is not a multiple of M={pattern.m}"))
            job.message(f"skipped {info.full_name}: input dimension {info.in_features} does not divide into "
                        f"groups of {pattern.m}", "warning")
        else:
            targets[info.name] = (info, target)
    modules = {name: block.get_submodule(name) for name in targets}
    stats = {}
    needs = set(method.needs) | quantize_step.needs(plan)
    if needs and targets:
        job.phase("gather statistics", 0, 1, f"block {index}")
        collector = StatsCollector(modules, needs)
        try:
            for batch in range(len(turn.calls)):
                job.check()
                try:
                    with torch.no_grad():
                        turn.run(batch)
                except StopBlock:
                    pass
                collector.stop_after_last()
        finally:
            stats = collector.close()
        finite.check_stats(stats, prefix, turn.compute)
        for layer_stats in stats.values():    # ours alone: a method may consume them (SparseGPT's H, in place)
            layer_stats.disposable = quantize_step.stats_disposable(plan)
        _return_freed_memory()
    pruned, later, joint_records = {}, {}, {}
    for i, (name, (info, target)) in enumerate(targets.items()):
        job.check()
        job.phase("prune", i, len(targets), info.full_name)
        tic = time.perf_counter()
        layer = modules[name]
        original = weight_matrix(layer).detach()
        stored_dtype = turn.storage
        turn.source.remember(info.full_name, layer)
        joint = quantize_step.joint_quantizer(plan, info.shape, stored_dtype, original.device)
        try:
            extra = {"quantizer": joint} if joint is not None else {}
            outcome = method.prune(original.float(), stats.get(name), target, pattern, plan.method_options, **extra)
        except NotPositiveDefinite as exc:
            skipped.append(SkippedLayer(info.full_name, str(exc)))
            job.message(f"skipped {info.full_name}: {exc}", "warning")
            continue
        if outcome.notes.get("dampening_retries"):
            job.message(f"{info.full_name}: Cholesky failed, succeeded with dampening "
                        f"{outcome.notes['dampening']:g}", "warning")
        if outcome.quantized is not None:
            joint_records[name] = outcome.quantized
        # summarized once recovery and quantization are done
        deferred = summarize is not None and (turn.targets is not None or plan.quantizing)
        summary = summarize(original.float(), outcome) if summarize is not None and not deferred else None
        if deferred:
            later[name] = (original.float(), outcome)
        with torch.no_grad():
            # Rounded to the dtype the weight is stored in, so the block propagates exactly what gets saved.
            set_weight_matrix(layer, outcome.weight.to(stored_dtype))
        finite.check_weight(weight_matrix(layer), info.full_name, *finite.method_blame(plan), outcome.weight,
                            stored_dtype)
        assert follows_pattern(weight_matrix(layer), pattern), f"{info.full_name} breaks {pattern}"
        pruned[name] = (info, target, time.perf_counter() - tic, outcome.notes, summary)
        if not plan.quantizing:
            stats.pop(name, None)
        del outcome
        _return_freed_memory()
    _return_freed_memory()
    curve = None
    if turn.targets is not None and pruned:
        curve = recover_block(turn, {n: modules[n] for n in pruned}, plan, pattern, sizes, job)
        finite.check_recovered({pruned[n][0].full_name: modules[n] for n in pruned}, plan)
    steps = _quantize_block(turn, modules, pruned, joint_records, stats, plan, skipped, job)
    stats.clear()
    for name, (original, outcome) in later.items():      # the views show the weights as recovery left them
        outcome.weight = weight_matrix(modules[name]).detach().float()
        if name in steps:
            outcome.quantized = steps[name].record
        info, target, seconds, notes, _ = pruned[name]
        pruned[name] = (info, target, seconds, notes, summarize(original, outcome))
    later.clear()
    job.phase("propagate", 0, 1, f"block {index}")
    errors = _propagate(turn, prefix, {n: modules[n] for n in pruned}, targets, plan.error_tokens, job,
                        {n: step.before for n, step in steps.items() if step.before is not None})
    results, records = [], {}
    for name, (info, target, seconds, notes, summary) in pruned.items():
        layer = modules[name]
        error, tokens, quant_error = errors.get(name, (None, 0, None))
        step = steps.get(name)
        if step is not None:
            records[info.full_name] = step.record
            notes = {**notes, "quantization": step.record.describe()}
            seconds += step.seconds
        result = LayerResult(info.full_name, index, info.shape, target, sparsity_of(weight_matrix(layer)), error, tokens,
                             seconds, notes, quant_error)
        results.append(result)
        job.emit(LayerPruned(index, result, summary))
    return results, curve, records


def _quantize_block(turn: Turn, modules, pruned: dict, joint_records: dict, stats, plan, skipped, job: Job) -> dict:
    """Quantize the block's pruned layers (the joint pass has done so already); unquantizable ones are listed."""
    if not plan.quantizing:
        return {}
    steps = {name: quantize_step.QuantizedStep(record, None, 0.0) for name, record in joint_records.items()}
    todo = {name: modules[name] for name in pruned if name not in joint_records}
    names = {name: pruned[name][0].full_name for name in pruned}
    done, refused = quantize_step.quantize_layers(todo, names, stats, plan, turn.storage, job)
    steps.update(done)
    for name, reason in refused.items():
        skipped.append(SkippedLayer(names[name], reason))
        job.message(f"{names[name]}: {reason}", "warning")
    return steps


@torch.no_grad()
def _propagate(turn: Turn, prefix: str, modules, targets, error_tokens, job: Job, before_quantization=None):
    """Run the pruned block over every batch into `turn.outputs`; measure each layer's relative output
    error ‖(W−Ŵ)X‖² / ‖WX‖² on the first tokens. WX is the pruned layer's own output plus (W−Ŵ)X,
    so the probe costs one extra product per layer, not two. For a quantized layer, also the error of
    its quantization alone, against `before_quantization` (its weight as pruned). Non-finite outputs
    stop the run, naming the block (`finite.check_outputs`)."""
    before_quantization = before_quantization or {}
    sums = {name: [0.0, 0.0, 0] for name in modules}
    quant_sums = {name: [0.0, 0.0] for name in before_quantization}

    def delta(name):    # made per call, not kept: a block's worth of float32 deltas is as big as the block
        layer = modules[name]
        dense = turn.source.dense_matrix(targets[name][0].full_name, layer).to(layer.weight.device, layer.weight.dtype)
        return (dense - weight_matrix(layer)).t().float()

    def probe(name):
        def hook(module, args, output):
            err, ref, seen = sums[name]
            if seen >= error_tokens:
                return
            take = error_tokens - seen
            x = args[0].reshape(-1, args[0].shape[-1])[:take].float()
            y = output.reshape(-1, output.shape[-1])[:take].float()
            if getattr(module, "bias", None) is not None:
                y = y - module.bias.float()
            lost = x @ delta(name)
            sums[name] = [err + float(lost.pow(2).sum()), ref + float((y + lost).pow(2).sum()), seen + x.shape[0]]
            if name in quant_sums:
                rounded = x @ (before_quantization[name] - weight_matrix(module).float()).t()
                q_err, q_ref = quant_sums[name]
                quant_sums[name] = [q_err + float(rounded.pow(2).sum()), q_ref + float((y + rounded).pow(2).sum())]
        return hook

    handles = [layer.register_forward_hook(probe(name)) for name, layer in modules.items()]
    changed = {targets[name][0].full_name: layer for name, layer in modules.items()}
    try:
        for batch in range(len(turn.calls)):
            job.check()
            out = turn.run(batch).to(turn.storage)
            finite.check_outputs(out, turn, batch, prefix, changed, turn.source.dense_matrix)
            turn.outputs.append(out)
    finally:
        for handle in handles:
            handle.remove()
    def ratio(err, ref):
        return err / ref if ref > 0 else 0.0

    return {name: (ratio(err, ref), seen, ratio(*quant_sums[name]) if name in quant_sums else None)
            for name, (err, ref, seen) in sums.items()}
