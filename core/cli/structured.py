"""`prune MODEL --structure mlp=F,heads=G`: the command line's structured shrink, a run of its own.

The arguments become a `core.studies.structure.ShrinkRequest`, the job the studio runs too: the model is
loaded, calibrated, shrunk in place, recovered if `--recover` asks, evaluated before and after if `--eval`
is given, and written as an ordinary folder whose config.json has the smaller shapes. N:M patterns,
quantization, streaming and other formats do not combine with it yet: each is refused with one line before
anything is loaded. A cancel or an error leaves nothing written.
"""

from __future__ import annotations

import time

from .. import workbench as wb
from ..errors import UserError
from ..events import Job
from ..export.writers import ExportRequest
from ..inputs import parse_structure
from ..pruning.structure.spec import CRITERIA, StructureSpec
from ..recovery.options import RecoveryOptions
from ..studies.structure import ShrinkRequest, check_export, shrink


def _refuse_combinations(args) -> None:
    others = {"--sparsity": args.sparsity is not None, "--pattern": args.pattern != "unstructured",
              "--override": bool(args.override), "--ignore": bool(args.ignore),
              "--allocation": args.allocation != "uniform",
              "--quantize": bool(getattr(args, "quantize", None)), "--stream": args.stream,
              "--compact": args.compact, "--format": args.format not in ("auto", "hf")}
    for flag, given in others.items():
        if given:
            raise UserError(f"{flag} does not combine with --structure yet: drop one of them (shrink first, "
                            f"then prune or quantize the shrunk folder).")


def run_structure(args, job: Job) -> dict:
    started = time.perf_counter()
    spec = StructureSpec(**parse_structure(args.structure), criterion=args.method or "flap")
    _refuse_combinations(args)
    if list(args.calib or []) in ([], ["generated"]):
        raise UserError("--structure ranks channels on calibration text: give --calib FILE (self-generated text "
                        "does not combine with --structure yet).")
    if spec.criterion not in CRITERIA:
        raise UserError(f"--method {spec.criterion} cannot rank whole channels: with --structure use "
                        f"{', '.join(CRITERIA)}.")
    recovery = RecoveryOptions(args.recover, epochs=args.recover_epochs, steps=args.recover_steps,
                               learning_rate=args.recover_lr, batch_windows=args.recover_batch)
    evaluation = wb.EvaluationRequest(args.eval, args.seqlen, args.eval_windows, args.text_field) if args.eval else None
    request = ShrinkRequest(spec, recovery, evaluation, args.device, args.batch_size)
    request.validate()
    export = ExportRequest(args.out, args.overwrite, args.format)
    check_export(export, job=job)
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(args.model, args.dtype, args.trust_remote_code), job)
    wb.calibrate(bench, wb.CalibrationRequest(tuple(args.calib), args.nsamples, args.seqlen, args.seed,
                                              args.text_field), job)
    run = shrink(bench, request, job, export=export)
    return _summary(run, time.perf_counter() - started)


def _summary(run, seconds: float) -> dict:
    result, exported = run.result, run.exported
    return {
        "method": result.spec.criterion, "pattern": f"structure {result.spec.describe()}",
        "sparsity": 1 - result.linear_after / result.linear_before,
        "layers": sum(len(b.channels) > 0 for b in result.blocks) * 3 + sum(len(b.groups) > 0 for b in result.blocks) * 4,
        "skipped": [], "seconds": seconds, "ppl_dense": run.ppl_dense.ppl if run.ppl_dense else None,
        "ppl": run.ppl.ppl if run.ppl else None, "out": str(exported.path), "structure": result.describe(),
        "export": {"format": "hf", "bytes": exported.weight_bytes,
                   "description": f"{run.summary()}; {exported.weight_bytes / 2**20:.1f} MiB of weights"},
    }
