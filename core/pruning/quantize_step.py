"""A block's quantization step, after its layers are pruned (and recovered): GPTQ on the same Hessian
statistics the pruning used (sharing SparseGPT's factor U where the dampening agrees) or round-to-nearest.
Pruned zeros stay exactly zero; the next block is calibrated on the quantized block's outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..events import Job
from ..models.architectures import set_weight_matrix, weight_matrix
from ..quantization.gptq import ColumnQuantizer, gptq
from ..quantization.grid import Grid
from ..quantization.quantized import QuantizedLayer
from ..quantization.rtn import round_to_nearest
from . import finite
from .methods.sparsegpt import NotPositiveDefinite, factor
from .plan import PrunePlan
from .stats import HESSIAN


@dataclass
class QuantizedStep:
    record: QuantizedLayer
    before: torch.Tensor        # the weight before quantization (float32, on the block's device)
    seconds: float


def needs(plan: PrunePlan) -> set[str]:
    scheme = plan.quantization
    return {HESSIAN} if scheme is not None and scheme.method == "gptq" else set()


def stats_disposable(plan: PrunePlan) -> bool:
    """Whether the first Hessian factor of a layer may consume its XᵀX in place: not when GPTQ will need
    the Hessian itself after the pruning method has used it up (ALPS always; SparseGPT unless GPTQ can reuse
    its factor: same dampening, no activation order)."""
    scheme = plan.quantization
    if scheme is None or scheme.method != "gptq" or scheme.joint or plan.method not in ("sparsegpt", "alps"):
        return True
    return plan.method == "sparsegpt" and not scheme.act_order and scheme.dampening == plan.sparsegpt.dampening


def grid_for(plan: PrunePlan, storage: torch.dtype) -> Grid:
    return Grid(plan.quantization.bits, plan.quantization.symmetric, storage)


def joint_quantizer(plan: PrunePlan, shape: tuple[int, int], storage: torch.dtype, device) -> ColumnQuantizer | None:
    """The quantizer SparseGPT's own sweep rounds with (the joint pass), or None."""
    scheme = plan.quantization
    group = scheme.group_for(shape[1]) if scheme is not None and scheme.joint else None
    return ColumnQuantizer(grid_for(plan, storage), group, *shape, device) if group is not None else None


def unquantizable(plan: PrunePlan, in_features: int) -> str | None:
    """Why a layer with `in_features` inputs cannot be quantized by the plan, or None."""
    if plan.quantization.group_for(in_features) is None:
        return (f"not quantized: input dimension {in_features} is not a multiple of group size "
                f"{plan.quantization.group_size}")
    return None


def quantize_layers(modules: dict, names: dict[str, str], stats: dict, plan: PrunePlan, storage: torch.dtype,
                    job: Job) -> tuple[dict[str, QuantizedStep], dict[str, str]]:
    """Quantize each of `modules` (local name -> linear) in place; `names` gives their full names.
    Returns the quantized layers and, for those left as they were, the reason."""
    scheme, done, refused = plan.quantization, {}, {}
    grid = grid_for(plan, storage)
    for i, (name, layer) in enumerate(modules.items()):
        job.check()
        job.phase("quantize", i, len(modules), names[name])
        reason = unquantizable(plan, layer.in_features)
        if reason is not None:
            refused[name] = reason
            continue
        tic = time.perf_counter()
        weight = weight_matrix(layer).detach().float().clone()   # kept: the layer's own tensor is overwritten
        pruned = (weight == 0) if plan.method != "none" else None
        group = scheme.group_for(weight.shape[1])
        try:
            quantized, record = _quantize(weight, stats.get(name), grid, group, pruned, plan)
        except NotPositiveDefinite as exc:
            refused[name] = f"not quantized: {exc}"
            continue
        with torch.no_grad():
            set_weight_matrix(layer, quantized.to(storage))
        finite.check_weight(weight_matrix(layer), names[name], *_blame(scheme), quantized, storage)
        if pruned is not None:
            assert bool((weight_matrix(layer)[pruned] == 0).all()), f"{names[name]} lost pruned zeros"
        done[name] = QuantizedStep(record, weight, time.perf_counter() - tic)
        stats.pop(name, None)
    return done, refused


def _blame(scheme) -> tuple[str, str]:
    if scheme.method == "gptq":
        return "GPTQ quantization", f"raise the dampening (--dampening, now {scheme.dampening:g})"
    return "round-to-nearest quantization", "please report this as a bug"


def _quantize(weight, layer_stats, grid: Grid, group: int, pruned, plan: PrunePlan):
    scheme = plan.quantization
    if scheme.method == "rtn":
        return round_to_nearest(weight, grid, group, pruned)
    order = None
    if scheme.act_order:
        order = torch.argsort(layer_stats.xtx.diagonal(), descending=True, stable=True).to(weight.device)
    U, dead, damp_used, retries = factor(layer_stats, weight.device, scheme.dampening, 1.0, order)
    quantized, record = gptq(weight, U, dead, grid, group, pruned=pruned, order=order, blocksize=scheme.blocksize)
    record.notes["dampening"] = damp_used
    if retries:
        record.notes["dampening_retries"] = retries
    return quantized, record
