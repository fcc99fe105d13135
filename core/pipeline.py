"""The sequential pruning loop: the only place that knows about block order, devices and cancellation.

For each decoder block: run it over the current inputs while hooks gather what the method needs,
prune its linear layers, then run the pruned block to produce the next block's inputs (so block
k+1 is calibrated on the outputs of the already-pruned block k). Only the current block sits on
the compute device. A cancel or an error restores every weight changed so far.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import summaries
from .architectures import set_weight_matrix, weight_matrix
from .calibration import CalibrationSet
from .capture import (BlockInputs, auto_batch_size, capture_first_block_inputs, move_outside_blocks,
                      run_block)
from .events import BlockStarted, CancelToken, EventSink, Finished, LayerPruned, Message, Phase, ignore
from .masks import follows_pattern
from .methods import METHODS
from .methods.sparsegpt import NotPositiveDefinite
from .models import LoadedModel, check_window_length
from .plan import PrunePlan, resolve_device
from .stats import StatsCollector


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
        }


def prune(
    loaded: LoadedModel,
    calib: CalibrationSet,
    plan: PrunePlan,
    on_event: EventSink = ignore,
    cancel: CancelToken | None = None,
    with_summaries: bool = False,
) -> PruneResult:
    """Prune `loaded.model` in place; on cancel (`Cancelled`) or any error every weight is restored."""
    plan.validate()
    check_window_length(loaded.model.config, calib.seqlen)
    cancel = cancel or CancelToken()
    device = resolve_device(plan.device)
    started = time.perf_counter()
    originals: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    model, layout = loaded.model, loaded.layout
    home = next(model.parameters()).device
    try:
        move_outside_blocks(model, layout.blocks, device)
        batch_size = plan.batch_size or auto_batch_size(calib.seqlen)
        inputs = capture_first_block_inputs(model, layout.blocks, calib.input_ids, device, batch_size, on_event, cancel)
        layers, skipped = [], []
        for index in range(len(layout.blocks)):
            cancel.check()
            on_event(BlockStarted(index, len(layout.blocks)))
            block = layout.blocks[index].to(device)
            results, inputs = _prune_block(index, block, loaded, inputs, plan, originals, skipped, on_event, cancel,
                                           with_summaries)
            layout.blocks[index].to(home)
            layers.extend(results)
        result = PruneResult(plan, str(device), layers, skipped, time.perf_counter() - started)
    except BaseException:
        _restore(originals)
        raise
    finally:
        for block in layout.blocks:
            block.to(home)
        move_outside_blocks(model, layout.blocks, home)
    on_event(Finished(result))
    return result


def _prune_block(index, block, loaded, inputs, plan, originals, skipped, on_event, cancel, with_summaries):
    method = METHODS[plan.method]
    targets = {}
    for info in loaded.layout.inventory[index].linears:
        target = plan.target_for(info.full_name)
        if target is None:
            skipped.append(SkippedLayer(info.full_name, "in the ignore list"))
        elif not plan.pattern.fits(info.in_features):
            skipped.append(SkippedLayer(info.full_name, f"input dimension {info.in_features} is not a multiple of M={plan.pattern.m}"))
            on_event(Message(f"skipped {info.full_name}: input dimension {info.in_features} does not divide into groups of {plan.pattern.m}", "warning"))
        else:
            targets[info.name] = (info, target)
    modules = {name: block.get_submodule(name) for name in targets}
    stats = {}
    if method.needs and targets:
        on_event(Phase("gather statistics", 0, 1, f"block {index}"))
        collector = StatsCollector(modules, set(method.needs))
        try:
            for batch in inputs:
                cancel.check()
                with torch.no_grad():
                    run_block(block, batch)
        finally:
            stats = collector.close()
    pruned = {}
    for i, (name, (info, target)) in enumerate(targets.items()):
        cancel.check()
        on_event(Phase("prune", i, len(targets), info.full_name))
        tic = time.perf_counter()
        layer = modules[name]
        original = weight_matrix(layer).detach()
        originals[info.full_name] = (layer, layer.weight.detach().to("cpu", copy=True))
        try:
            outcome = method.prune(original.float(), stats.get(name), target, plan.pattern, plan.sparsegpt)
        except NotPositiveDefinite as exc:
            skipped.append(SkippedLayer(info.full_name, str(exc)))
            on_event(Message(f"skipped {info.full_name}: {exc}", "warning"))
            continue
        if outcome.notes.get("dampening_retries"):
            on_event(Message(f"{info.full_name}: Cholesky failed, succeeded with dampening {outcome.notes['dampening']:g}", "warning"))
        summary = summaries.summarize(original.float(), outcome) if with_summaries else None
        with torch.no_grad():
            set_weight_matrix(layer, outcome.weight.to(original.dtype))
        assert follows_pattern(weight_matrix(layer), plan.pattern), f"{info.full_name} breaks {plan.pattern}"
        pruned[name] = (info, target, time.perf_counter() - tic, outcome.notes, summary)
        stats.pop(name, None)
    on_event(Phase("propagate", 0, 1, f"block {index}"))
    outputs, errors = _propagate(block, inputs, {n: modules[n] for n in pruned}, originals, targets, plan.error_tokens, cancel)
    results = []
    for name, (info, target, seconds, notes, summary) in pruned.items():
        layer = modules[name]
        error, tokens = errors.get(name, (None, 0))
        result = LayerResult(info.full_name, index, info.shape, target, _sparsity(weight_matrix(layer)), error, tokens,
                             seconds, notes)
        results.append(result)
        on_event(LayerPruned(index, result, summary))
    return results, outputs


@torch.no_grad()
def _propagate(block, inputs: list[BlockInputs], modules, originals, targets, error_tokens, cancel):
    """Run the pruned block over every batch; measure each layer's relative output error on the first tokens."""
    sums = {name: [0.0, 0.0, 0] for name in modules}
    deltas = {}
    for name, layer in modules.items():
        dense = weight_matrix(layer, originals[targets[name][0].full_name][1]).to(layer.weight.device).float()
        deltas[name] = (dense, dense - weight_matrix(layer).float())

    def probe(name):
        def hook(module, args, output):
            err, ref, seen = sums[name]
            if seen >= error_tokens:
                return
            x = args[0].reshape(-1, args[0].shape[-1])[: error_tokens - seen].float()
            dense, delta = deltas[name]
            sums[name] = [err + float((x @ delta.t()).pow(2).sum()), ref + float((x @ dense.t()).pow(2).sum()),
                          seen + x.shape[0]]
        return hook

    handles = [layer.register_forward_hook(probe(name)) for name, layer in modules.items()]
    outputs = []
    try:
        for batch in inputs:
            cancel.check()
            outputs.append(BlockInputs(run_block(block, batch), batch.args, batch.kwargs))
    finally:
        for handle in handles:
            handle.remove()
    errors = {name: (err / ref if ref > 0 else 0.0, seen) for name, (err, ref, seen) in sums.items()}
    return outputs, errors


def _sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def _restore(originals: dict) -> None:
    with torch.no_grad():
        for layer, weight in originals.values():
            layer.weight.data.copy_(weight.to(layer.weight.device))
