"""The one pass over the calibration data that a sensitivity profile needs, made with the dense model.

Block by block, as the pruning pipeline walks them (`core.pruning.passes`), each block runs over its dense
inputs while `StatsCollector` hooks gather what the method needs for every layer (Wanda's ‖X_j‖, the
Hessian's XᵀX), and its outputs become the next block's inputs. Nothing is pruned here. Every layer's
pruned weight is computed once, on the spot, to measure the method's relative output error on the
calibration inputs from XᵀX alone,

    ‖(W − Ŵ)X‖² / ‖WX‖² = tr(D G Dᵀ) / tr(W G Wᵀ),   D = W − Ŵ,  G = XᵀX  (bias left out),

which is the fast mode's score. XᵀX is then dropped unless the method itself needs it. The statistics
are what the pipeline would gather for a layer whose block's inputs are dense: the same hooks, batches and
compute dtype, so pruning one layer from them gives exactly what the pipeline gives when every other layer
is ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..compute import resolve_device
from ..data.calibration import CalibrationSet
from ..events import Job
from ..models.architectures import weight_matrix
from ..models.loaded import LoadedModel, check_window_length
from ..pruning.activations import ActivationBudget, hidden_bytes
from ..pruning.capture import auto_batch_size
from ..pruning.in_memory import InMemoryBlocks
from ..pruning.methods import METHODS
from ..pruning.passes import Turn, capture, run_gathering
from ..pruning.pipeline import default_compute_dtype
from ..pruning.placement import Placement
from ..pruning.plan import PrunePlan
from ..pruning.stats import HESSIAN, LayerStats


@dataclass
class DenseStats:
    """Per prunable layer (full name): its statistics, the device they live on, and its fast output error."""

    stats: dict[str, LayerStats] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)     # full name -> why it is not profiled
    device: torch.device = torch.device("cpu")
    storage: torch.dtype = torch.float32
    seconds: float = 0.0


def relative_error(weight: torch.Tensor, pruned: torch.Tensor, xtx: torch.Tensor) -> float:
    """‖(W − Ŵ)X‖² / ‖WX‖² from G = XᵀX: weights [out, in], G [in, in]."""
    w = weight.to(xtx.device, torch.float64)
    delta = w - pruned.to(xtx.device, torch.float64)
    g = xtx.to(torch.float64)
    lost = float(((delta @ g) * delta).sum())
    ref = float(((w @ g) * w).sum())
    return lost / ref if ref > 0 else 0.0


def prune_layer(plan: PrunePlan, weight: torch.Tensor, stats: LayerStats | None, pattern):
    """The method's pruned weight (float32) for one layer, as the pipeline computes it."""
    return METHODS[plan.method].prune(weight.float(), stats, plan.sparsity, pattern, plan.method_options)


def gather(loaded: LoadedModel, calib: CalibrationSet, plan: PrunePlan, names: set[str], job: Job) -> DenseStats:
    """Statistics and fast errors of the layers in `names`, from one dense pass over `calib`. The model's
    weights are not changed; its blocks visit the compute device and come back."""
    check_window_length(loaded.model.config, calib.seqlen)
    started = time.perf_counter()
    device = resolve_device(plan.device)
    source = InMemoryBlocks(loaded)
    compute = default_compute_dtype(source.storage_dtype, device)
    per_store = hidden_bytes(calib.nsamples, calib.seqlen, loaded.model.config.hidden_size, source.storage_dtype)
    budget = ActivationBudget(None, per_store)
    batch_size = plan.batch_size or auto_batch_size(calib.seqlen)
    layout = source.layout
    placements = [Placement(str(device), False) for _ in layout.blocks]
    method = METHODS[plan.method]
    needs = set(method.needs) | {HESSIAN}
    keep_hessian = HESSIAN in method.needs
    result = DenseStats(device=device, storage=source.storage_dtype)
    inputs = None
    try:
        inputs, raw_calls = capture(source, calib, placements, budget, batch_size, job)
        calls = [c.to(device, compute) for c in raw_calls]
        for index, info_block in enumerate(layout.inventory):
            job.check()
            job.phase("dense statistics", index, len(layout.blocks), f"block {index}")
            block = source.load(index, device, compute)
            pattern = plan.pattern_for(index)
            wanted = {}
            for info in info_block.linears:
                if info.full_name not in names:
                    continue
                if not pattern.fits(info.in_features):
                    result.skipped[info.full_name] = (f"input dimension {info.in_features} is not a multiple of "
                                                      f"M={pattern.m}")
                    continue
                wanted[info.name] = info
            modules = {name: block.get_submodule(name) for name in wanted}
            outputs = budget.new_store()
            turn = Turn(index, block, device, compute, source.storage_dtype, inputs, outputs, calls, source)
            stats = run_gathering(turn, modules, needs, job)
            for name, info in wanted.items():
                job.check()
                weight = weight_matrix(modules[name]).detach()
                outcome = prune_layer(plan, weight, stats[name], pattern)
                result.errors[info.full_name] = relative_error(weight.float(), outcome.weight, stats[name].xtx)
                result.stats[info.full_name] = stats[name]
                del outcome
            for layer_stats in {id(s): s for s in stats.values()}.values():
                layer_stats.cache.clear()
                if not keep_hessian:
                    layer_stats.xtx = None
            source.unload(index, block)
            inputs.close()
            inputs = outputs
        job.phase("dense statistics", len(layout.blocks), len(layout.blocks))
    finally:
        if inputs is not None:
            inputs.close()
        source.close()
        budget.close()
    result.seconds = time.perf_counter() - started
    return result
