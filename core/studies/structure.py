"""The structured shrink as a job both front ends call: shrink, recover, measure, export.

`shrink(bench, request, job)` shrinks the workbench's model by whole MLP channels and key/value groups
(`core.pruning.structure`), recovers it as asked, and measures the perplexity before and after. A session
that remembers (the studio) shrinks a copy, so its dense model and its runs stay as they were; one that does
not (the command line) shrinks the model itself. The result is kept as `bench.shrunk` until another model
opens, and `export_shrunk` writes it through the same `ExportRequest` checks as every run (output folder,
leftovers of killed exports, room on the disk) into an ordinary folder with the smaller shapes, atomically.

It sits in the studies wing because it needs the evaluation and export wings beside the workbench's state,
and the workbench module itself has no room left for a second kind of run.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import workbench as wb
from ..compute import resolve_device
from ..data.calibration import default_seqlen
from ..errors import UserError
from ..evaluation.perplexity import Perplexity, evaluation_windows, perplexity
from ..events import Job, as_job
from ..export.folder import write_export
from ..export.report import build_report
from ..export.writers import ExportRequest, Exported, folder_weight_bytes
from ..models.architectures import find_layout
from ..models.loaded import LoadedModel
from ..pruning.plan import PrunePlan
from ..pruning.structure.run import ShrinkResult, shrink as shrink_model
from ..pruning.structure.spec import StructureSpec, counts
from ..recovery.options import RecoveryOptions

# What the export checks see of a shrink: nothing pruned to a pattern, nothing quantized (an ordinary folder).
EXPORT_PLAN = PrunePlan(method="magnitude", sparsity=0.0)


@dataclass(frozen=True)
class ShrinkRequest:
    spec: StructureSpec
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    evaluation: wb.EvaluationRequest | None = None    # perplexity before and after, if given
    device: str = "auto"
    batch_size: int = 0                                # windows per forward pass; 0 = about 4096 tokens

    def validate(self) -> None:
        self.recovery.validate()


@dataclass
class ShrinkRun:
    """A finished shrink: the smaller model (a copy, or the workbench's own), what was cut, its perplexities."""

    result: ShrinkResult
    loaded: LoadedModel
    ppl_dense: Perplexity | None = None
    ppl: Perplexity | None = None
    exported: Exported | None = None

    def report(self, bench: wb.Workbench) -> dict:
        durations = {"load": bench.load_seconds, "shrink": self.result.seconds}
        return {**build_report(self.loaded, None, bench.calib, self.ppl_dense, self.ppl, durations),
                "structure": self.result.describe()}

    def view(self) -> dict:
        """What a front end shows of the shrink, without a tensor (the studio's GUI thread gets this only)."""
        d = self.result.describe()
        return {"summary": self.summary(), "parameters": d["parameters"], "intermediate_size": d["intermediate_size"],
                "num_attention_heads": d["num_attention_heads"], "num_key_value_heads": d["num_key_value_heads"],
                "ppl_dense": self.ppl_dense.ppl if self.ppl_dense else None, "ppl": self.ppl.ppl if self.ppl else None,
                "recovery": [c.describe() for c in self.result.curves]}

    def summary(self) -> str:
        r, d = self.result, self.result.describe()
        c = r.counts
        heads, kv = d["num_attention_heads"], d["num_key_value_heads"]
        text = (f"shrunk {len(r.blocks)} blocks: intermediate {c.intermediate} -> {c.intermediate - c.channels}, "
                f"heads {heads[0]} -> {heads[1]} (key/value {kv[0]} -> {kv[1]}); parameters "
                f"{r.parameters_before:,} -> {r.parameters_after:,} ({r.removed_fraction:.1%} removed); "
                f"bias compensation: {', '.join(k for k, v in r.compensated.items() if v) or 'none'}")
        if r.curves:
            before = sum(c.before for c in r.curves) / len(r.curves)
            after = sum(c.after for c in r.curves) / len(r.curves)
            text += f"; {r.recovery.mode} recovery: error {before:.3g} -> {after:.3g}"
        if self.ppl is not None:
            text += f"; perplexity {self.ppl_dense.ppl:.2f} -> {self.ppl.ppl:.2f}"
        return text


def check_export(request: ExportRequest, loaded: LoadedModel | None = None, job: Job | None = None) -> Path:
    """Refuse, before any work, an export a shrink cannot be written as; the target folder."""
    if request.format not in ("auto", "hf"):
        raise UserError(f"a shrunk model is written as an ordinary folder, not {request.format}: export it with "
                        "format hf, then prune, quantize or convert the smaller folder.")
    return request.check(EXPORT_PLAN, loaded=loaded, job=job)


def shrink(bench: wb.Workbench, request: ShrinkRequest, job: Job | None = None, *,
           export: ExportRequest | None = None) -> ShrinkRun:
    """Shrink the dense model by `request` (a copy in a session that remembers), recover and measure it, keep it
    as `bench.shrunk`, and write it to `export` if given. On cancel or error nothing is kept or written."""
    job = as_job(job)
    request.validate()
    loaded = bench.need_model()
    if bench.streamed:
        raise UserError("structured shrinking needs the whole model in memory: open it without streaming.")
    counts(loaded.model.config, request.spec)        # refuses what this model cannot do before any work
    if bench.calib is None:
        raise UserError("Load calibration text first: shrinking ranks channels on calibration windows.")
    if export is not None:
        check_export(export, loaded, job)
    wb.restore_dense(bench, job)                     # a shrink starts from the dense model, as every run
    bench.shrunk = None
    loaded.model.to(resolve_device(request.device))
    windows = _windows(loaded, request.evaluation)
    ppl_dense = _dense_perplexity(bench, request.evaluation, windows, job)
    target, teacher = loaded, None
    if bench.remember:
        model = copy.deepcopy(loaded.model)
        target = dataclasses.replace(loaded, model=model, layout=find_layout(model))
        teacher = loaded.model if request.recovery.mode == "e2e" else None
    result = shrink_model(target, bench.calib, request.spec, job, batch_size=request.batch_size or None,
                          recovery=request.recovery, teacher=teacher)
    ppl = perplexity(target.model, windows, job=job) if windows is not None else None
    run = ShrinkRun(result, target, ppl_dense, ppl)
    if export is not None:
        export_shrunk(bench, export, job, run)
    bench.shrunk = run
    return run


def _windows(loaded: LoadedModel, request: wb.EvaluationRequest | None):
    if request is None:
        return None
    seqlen = request.seqlen or default_seqlen(loaded.context_length)
    return evaluation_windows(loaded.tokenizer, request.path, seqlen, request.windows, request.text_field)


def _dense_perplexity(bench: wb.Workbench, request, windows, job: Job) -> Perplexity | None:
    if request is None:
        return None
    if request not in bench.dense_ppl:
        bench.dense_ppl[request] = perplexity(bench.loaded.model, windows, job=job)
    return bench.dense_ppl[request]


def export_shrunk(bench: wb.Workbench, request: ExportRequest, job: Job | None = None,
                  run: ShrinkRun | None = None) -> Exported:
    """Write the last shrink (or `run`) as an ordinary folder with its report and calibration windows."""
    job = as_job(job)
    run = run or getattr(bench, "shrunk", None)
    if run is None:
        raise UserError("Nothing shrunk to export yet: run a structured shrink first.")
    out = check_export(request, run.loaded, job)
    path = write_export(run.loaded, out, run.report(bench), bench.calib, overwrite=request.overwrite, job=job)
    size = folder_weight_bytes(path)
    run.exported = Exported(path, f"weights {size / 2**20:,.1f} MiB, an ordinary folder with the smaller shapes "
                                  f"({run.result.removed_fraction:.1%} of the parameters removed)", None, "hf", size)
    return run.exported
