"""`compression-studio profile`: prune one unit at a time and write the sensitivity profile as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import workbench as wb
from ..errors import UserError
from ..events import Job
from ..pruning.methods import METHODS
from ..pruning.methods.alps import Options as ALPSOptions
from ..pruning.methods.sparsegpt import Options
from ..studies.profile_file import UNITS, load_profile, model_identity, save_profile
from ..studies.sensitivity import ProfileRequest, run_profile
from ..workbench import CalibrationRequest, OpenRequest
from .arguments import model_args

TOP = 10


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("profile", help="sensitivity profile: prune one layer, block or layer kind at a "
                                                    "time and measure what it costs")
    model_args(parser)
    parser.add_argument("--calib", nargs="+", required=True, metavar="FILE", help="calibration text files")
    parser.add_argument("--eval", metavar="FILE", help="text to measure perplexity on (not needed with --fast)")
    parser.add_argument("--text-field", default="text", help="field or column holding the text in JSON/CSV/Parquet")
    parser.add_argument("--unit", default="layer", choices=list(UNITS),
                        help="what is pruned at a time: a layer, a decoder block, or every layer of one kind")
    parser.add_argument("--method", default="wanda", choices=[m for m in METHODS if m != "none"])
    parser.add_argument("--sparsity", type=float, default=None, help="fraction of each unit's weights to remove "
                                                                     "(default 0.5, or the pattern's)")
    parser.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, 4:8 or any N:M")
    parser.add_argument("--fast", action="store_true", help="rank by the method's output error on the calibration "
                                                            "data instead of perplexity (no evaluation passes)")
    parser.add_argument("--eval-windows", type=int, default=8, help="evaluation windows per unit (default 8)")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--seqlen", type=int, default=None, help="tokens per window (default min(2048, context))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    parser.add_argument("--dampening", type=float, default=0.01, help="SparseGPT dampening, fraction of mean diag(H)")
    parser.add_argument("--batch-size", type=int, default=0, help="windows per forward pass (default: ~4096 tokens)")
    parser.add_argument("--out", required=True, metavar="PROFILE.json", help="where to write the profile")
    parser.set_defaults(run=run, show=print_summary)
    return parser


def run(args, job: Job) -> dict:
    request = ProfileRequest(unit=args.unit, method=args.method, sparsity=args.sparsity, pattern=args.pattern,
                             fast=args.fast, eval_path=args.eval, eval_windows=args.eval_windows,
                             eval_seqlen=args.seqlen, text_field=args.text_field,
                             sparsegpt=Options(blocksize=args.blocksize, dampening=args.dampening),
                             alps=ALPSOptions(), device=args.device, batch_size=args.batch_size)
    request.plan()       # every choice checked before the model is opened
    for path in [*args.calib, *([args.eval] if args.eval and not args.fast else [])]:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file.")
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist.")
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, OpenRequest(args.model, args.dtype, args.trust_remote_code), job)
    wb.calibrate(bench, CalibrationRequest(tuple(args.calib), args.nsamples, args.seqlen, args.seed, args.text_field),
                 job)
    profile = run_profile(bench, request, job)
    save_profile(profile, out)
    return {
        "model": args.model, "unit": profile.unit, "method": profile.method, "sparsity": profile.sparsity,
        "pattern": profile.pattern, "fast": profile.fast, "dense_ppl": profile.dense_ppl,
        "units": len(profile.entries), "seconds": profile.seconds, "stats_seconds": profile.stats_seconds,
        "spearman": profile.spearman, "out": str(out),
        "top": [{"name": e.name, "kind": e.kind, "block": e.block, "score": e.score, "delta_ppl": e.delta_ppl,
                 "error": e.error} for e in profile.ranked()[:TOP]],
    }


def print_summary(result: dict) -> None:
    measured = not result["fast"]
    what = "Δ perplexity" if measured else "output error"
    dense = f", dense perplexity {result['dense_ppl']:.3f}" if measured else ""
    print(f"{result['method']} {result['pattern']} at {result['sparsity']:.0%}, {result['units']} units by "
          f"{result['unit']} in {result['seconds']:.1f} s{dense}")
    print(f"  most sensitive          {what:>14}")
    for entry in result["top"]:
        print(f"  {entry['name']:<34} {entry['score']:>12.4g}")
    if result["spearman"] is not None:
        print(f"fast ranking (output error) against the measured one: Spearman {result['spearman']:.3f}")
    print(f"written to {result['out']}")


def load_for(profile_path: str, loaded) -> object:
    """The profile at `profile_path`, refused with one line when it was measured on another model."""
    return load_profile(profile_path, model_identity(loaded))
