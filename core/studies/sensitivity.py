"""Sensitivity profile: prune one unit at a time, everything else dense, and see what it costs.

A unit is a layer, a whole decoder block, or a layer kind (every `mlp.down_proj`, say). The dense
statistics of every layer come from one pass over the calibration data (`dense_pass.gather`); each unit
then costs its layers' masks (and weight updates, for SparseGPT), one perplexity pass over a few windows
of the evaluation text, and a restore of the unit's weights, bit for bit. The pass starts at the unit's
first block: the dense blocks before it are recorded once (`evaluation.from_block`), so a layer halfway
down costs about half a pass. Fast mode skips the perplexity
passes and ranks units by the method's relative output error on the calibration inputs instead (the
mean over the unit's layers). A measured profile records both scores, and how well the fast ranking
agrees with the measured one (Spearman's ρ).

A cancel between units (or within one) leaves the model dense: the unit being measured is restored
before `Cancelled` goes on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.calibration import default_seqlen
from ..errors import UserError
from ..evaluation.from_block import DEFAULT_MAX_BYTES, BlockInputs, cache_bytes
from ..evaluation.perplexity import evaluation_windows, perplexity
from ..events import Event, Job, as_job
from ..models.architectures import set_weight_matrix, weight_matrix
from ..pruning.methods.alps import Options as ALPSOptions
from ..pruning.methods.sparsegpt import Options as SparseGPTOptions
from ..pruning.plan import PrunePlan
from ..workbench import EvaluationRequest, Workbench, restore_dense
from .dense_pass import DenseStats, gather, prune_layer
from .profile_file import UNITS, Profile, UnitEntry, load_profile, model_identity, save_profile

__all__ = ["ProfileRequest", "UnitProfiled", "Profile", "UnitEntry", "run_profile", "spearman", "average_ranks",
           "save_profile", "load_profile", "model_identity", "UNITS"]


@dataclass(frozen=True)
class UnitProfiled(Event):
    """One unit of a sensitivity profile is measured; `entry` is its `UnitEntry`."""

    entry: Any
    done: int
    total: int


@dataclass(frozen=True)
class ProfileRequest:
    unit: str = "layer"                      # "layer", "block" or "kind"
    method: str = "wanda"
    sparsity: float | None = None            # None: the pattern's, or 0.5
    pattern: str = "unstructured"
    fast: bool = False                       # rank by output error on the calibration data, no perplexity pass
    eval_path: str | None = None             # evaluation text (not needed in fast mode)
    eval_windows: int = 8
    eval_seqlen: int | None = None           # None: the calibration's window length
    text_field: str = "text"
    sparsegpt: SparseGPTOptions = field(default_factory=SparseGPTOptions)
    alps: ALPSOptions = field(default_factory=ALPSOptions)
    device: str = "auto"
    batch_size: int = 0

    def plan(self) -> PrunePlan:
        """The validated pruning choices every unit is pruned by."""
        if self.unit not in UNITS:
            raise UserError(f"unknown unit {self.unit!r}: choose one of {', '.join(UNITS)}.")
        if self.method == "none":
            raise UserError("method none prunes nothing, so there is nothing to profile: choose a pruning method.")
        if not self.fast:
            if not self.eval_path:
                raise UserError("a measured profile needs evaluation text (--eval FILE), or use --fast.")
            if self.eval_windows < 1:
                raise UserError(f"{self.eval_windows} evaluation windows: measure on at least one (8 is usual).")
        return PrunePlan.build(method=self.method, sparsity=self.sparsity, pattern=self.pattern,
                               sparsegpt=self.sparsegpt, alps=self.alps, device=self.device,
                               batch_size=self.batch_size)

    def evaluation(self, calib_seqlen: int) -> EvaluationRequest:
        return EvaluationRequest(self.eval_path, self.eval_seqlen or calib_seqlen, self.eval_windows, self.text_field)


@dataclass(frozen=True)
class _Unit:
    name: str
    kind: str
    block: int | None
    layers: tuple                            # (full name, block index, LinearInfo) of each layer


def units_of(layout, unit: str, profiled: set[str]) -> list[_Unit]:
    """The units, in model order, each with the profiled layers it holds."""
    if unit == "layer":
        return [_Unit(info.full_name, info.name, b.index, ((info.full_name, b.index, info),))
                for b in layout.inventory for info in b.linears if info.full_name in profiled]
    if unit == "block":
        found = [_Unit(b.name, "block", b.index, tuple((i.full_name, b.index, i) for i in b.linears
                                                       if i.full_name in profiled)) for b in layout.inventory]
        return [u for u in found if u.layers]
    kinds: dict[str, list] = {}
    for b in layout.inventory:
        for info in b.linears:
            if info.full_name in profiled:
                kinds.setdefault(info.name, []).append((info.full_name, b.index, info))
    return [_Unit(kind, kind, None, tuple(layers)) for kind, layers in kinds.items()]


def run_profile(bench: Workbench, request: ProfileRequest, job: Job | None = None) -> Profile:
    """Profile the workbench's model (opened and calibrated) by `request`; the model ends dense."""
    job, started = as_job(job), time.perf_counter()
    plan = request.plan()
    loaded = bench.need_model()
    if bench.streamed:
        raise UserError("a streamed model is never whole in memory, so its units cannot be evaluated one by one: "
                        "open it without --stream.")
    if bench.calib is None:
        raise UserError("Load calibration text first: a profile needs calibration windows.")
    restore_dense(bench, job)
    names = [info.full_name for b in loaded.layout.inventory for info in b.linears]
    windows = evaluation = None
    if not request.fast:
        evaluation = request.evaluation(bench.calib.seqlen or default_seqlen(loaded.context_length))
        windows = evaluation_windows(loaded.tokenizer, evaluation.path, evaluation.seqlen, evaluation.windows,
                                     evaluation.text_field)
    bench.pruning = True
    try:
        dense = gather(loaded, bench.calib, plan, set(names), job)
        units = units_of(loaded.layout, request.unit, set(dense.errors))
        if not units:
            raise UserError(f"no layer of this model can be pruned with pattern {plan.pattern}: choose another pattern.")
        dense_ppl = recorded = None
        if windows is not None:
            recorded = _record_block_inputs(loaded, windows, plan, job)
            dense_ppl = recorded.dense if recorded is not None else (
                bench.dense_ppl.get(evaluation) or perplexity(loaded.model, windows, device=plan.device, job=job))
            bench.dense_ppl.setdefault(evaluation, dense_ppl)
        entries = []
        for i, unit in enumerate(units):
            job.check()
            job.phase("profile", i, len(units), unit.name)
            entry = _measure(loaded, plan, dense, unit, windows, recorded, dense_ppl, job)
            entries.append(entry)
            job.emit(UnitProfiled(entry, i + 1, len(units)))
        job.phase("profile", len(units), len(units))
    finally:
        bench.pruning = False
    profile = Profile(request.unit, plan.method, plan.sparsity, str(plan.pattern), request.fast,
                      model_identity(loaded), entries, dense_ppl.ppl if dense_ppl is not None else None,
                      int(windows.shape[0]) if windows is not None else 0,
                      int(windows.shape[1]) if windows is not None else 0, bench.calib.describe(),
                      time.perf_counter() - started, stats_seconds=dense.seconds)
    if not request.fast and len(entries) > 1:
        profile.spearman = spearman([e.error for e in entries], [e.delta_ppl for e in entries])
    return profile


def _record_block_inputs(loaded, windows, plan: PrunePlan, job: Job) -> BlockInputs | None:
    """Every block's dense input on the evaluation windows, so that a unit in block k is evaluated from
    block k on; None (evaluate whole passes) when they would take more than `DEFAULT_MAX_BYTES`."""
    blocks = loaded.layout.blocks
    dtype = next(loaded.model.parameters()).dtype
    if cache_bytes(windows, loaded.model.config.hidden_size, len(blocks), dtype) > DEFAULT_MAX_BYTES:
        return None
    return BlockInputs.record(loaded.model, blocks, windows, device=plan.device, job=job)


def _measure(loaded, plan: PrunePlan, dense: DenseStats, unit: _Unit, windows, recorded: BlockInputs | None,
             dense_ppl, job: Job) -> UnitEntry:
    tic = time.perf_counter()
    error = sum(dense.errors[name] for name, _, _ in unit.layers) / len(unit.layers)
    params = sum(info.parameters for _, _, info in unit.layers)
    ppl = delta = None
    if windows is not None:
        saved = {}
        try:
            with torch.no_grad():
                for name, block, _ in unit.layers:
                    layer = loaded.model.get_submodule(name)
                    saved[name] = layer.weight.detach().clone()
                    weight = weight_matrix(layer).detach().to(dense.device)
                    stats = dense.stats[name]
                    outcome = prune_layer(plan, weight, stats, plan.pattern_for(block))
                    stats.cache.clear()
                    set_weight_matrix(layer, outcome.weight.to(dense.storage))
                    del outcome
            if recorded is not None:
                first = min(block for _, block, _ in unit.layers)
                ppl = recorded.perplexity_from(loaded.model, first, windows, device=plan.device, job=job).ppl
            else:
                ppl = perplexity(loaded.model, windows, device=plan.device, job=job).ppl
            delta = ppl - dense_ppl.ppl
        finally:
            with torch.no_grad():
                for name, raw in saved.items():
                    loaded.model.get_submodule(name).weight.data.copy_(raw)
    return UnitEntry(unit.name, unit.kind, unit.block, params, tuple(n for n, _, _ in unit.layers), error, delta, ppl,
                     time.perf_counter() - tic)


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n of `values`, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (None if either is constant)."""
    if len(a) != len(b):
        raise ValueError("spearman needs two lists of the same length")
    if len(a) < 2:
        return None
    ra, rb = average_ranks(list(a)), average_ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)
