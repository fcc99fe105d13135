"""`prune MODEL --structure mlp=F,heads=G`: the command line's structured shrink, a run of its own.

The model is loaded, calibrated, shrunk in place (`core.pruning.structure`), optionally evaluated before
and after, and written as an ordinary folder whose config.json has the smaller shapes. Nothing else
(N:M patterns, quantization, recovery, streaming, other formats) combines with it yet: each is refused
with one line before anything is loaded. A cancel or an error leaves nothing written; the shrunk model
in memory is simply dropped when the command exits.
"""

from __future__ import annotations

import time

from .. import workbench as wb
from ..compute import resolve_device
from ..data.calibration import default_seqlen
from ..errors import UserError
from ..evaluation.perplexity import evaluation_windows, perplexity
from ..events import Job
from ..export.destination import check_output
from ..export.folder import write_export
from ..export.report import build_report
from ..export.writers import folder_weight_bytes
from ..inputs import parse_structure
from ..pruning.structure.run import shrink
from ..pruning.structure.spec import CRITERIA, StructureSpec, counts


def _refuse_combinations(args) -> None:
    others = {"--sparsity": args.sparsity is not None, "--pattern": args.pattern != "unstructured",
              "--override": bool(args.override), "--ignore": bool(args.ignore),
              "--allocation": args.allocation != "uniform", "--recover": args.recover != "none",
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
    if spec.criterion not in CRITERIA:
        raise UserError(f"--method {spec.criterion} cannot rank whole channels: with --structure use "
                        f"{', '.join(CRITERIA)}.")
    out = check_output(args.out, args.overwrite)
    bench = wb.Workbench(remember=False)
    loaded = wb.open_model(bench, wb.OpenRequest(args.model, args.dtype, args.trust_remote_code), job)
    counts(loaded.model.config, spec)           # refuses what this model cannot do before calibrating
    calib = wb.calibrate(bench, wb.CalibrationRequest(tuple(args.calib), args.nsamples, args.seqlen, args.seed,
                                                      args.text_field), job)
    loaded.model.to(resolve_device(args.device))
    windows = ppl_dense = ppl = None
    if args.eval:
        seqlen = args.seqlen or default_seqlen(loaded.context_length)
        windows = evaluation_windows(loaded.tokenizer, args.eval, seqlen, args.eval_windows, args.text_field)
        ppl_dense = perplexity(loaded.model, windows, job=job)
    result = shrink(loaded, calib, spec, job, batch_size=args.batch_size or None)
    if windows is not None:
        ppl = perplexity(loaded.model, windows, job=job)
    report = {**build_report(loaded, None, calib, ppl_dense, ppl, {"shrink": result.seconds}),
              "structure": result.describe()}
    path = write_export(loaded, out, report, calib, overwrite=args.overwrite, job=job)
    return _summary(result, path, ppl_dense, ppl, time.perf_counter() - started)


def _summary(result, path, ppl_dense, ppl, seconds: float) -> dict:
    c, described = result.counts, result.describe()
    heads, kv = described["num_attention_heads"], described["num_key_value_heads"]
    text = (f"shrunk {len(result.blocks)} blocks: intermediate {c.intermediate} -> {c.intermediate - c.channels}, "
            f"heads {heads[0]} -> {heads[1]} (key/value {kv[0]} -> {kv[1]}); parameters "
            f"{result.parameters_before:,} -> {result.parameters_after:,} ({result.removed_fraction:.1%} removed); "
            f"bias compensation: {', '.join(k for k, v in result.compensated.items() if v) or 'none'}; "
            f"{folder_weight_bytes(path) / 2**20:.1f} MiB of weights")
    return {
        "method": result.spec.criterion, "pattern": f"structure {result.spec.describe()}",
        "sparsity": 1 - result.linear_after / result.linear_before,
        "layers": sum(len(b.channels) > 0 for b in result.blocks) * 3 + sum(len(b.groups) > 0 for b in result.blocks) * 4,
        "skipped": [], "seconds": seconds, "ppl_dense": ppl_dense.ppl if ppl_dense else None,
        "ppl": ppl.ppl if ppl else None, "out": str(path), "structure": described,
        "export": {"format": "hf", "bytes": folder_weight_bytes(path), "description": text},
    }
