"""`compression-studio sweep`: perplexity against sparsity over a grid of methods × sparsities × patterns."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..events import Job
from ..pruning.methods.alps import Options as ALPSOptions
from ..pruning.methods.sparsegpt import Options as SparseGPTOptions
from ..studies.sweep import format_duration, run_sweep
from ..studies.sweep_plot import plot_sweep
from ..studies.sweep_points import SWEEP_METHODS, MethodOptions, SweepRequest
from ..studies.sweep_ray import run_sweep_ray
from ..workbench import CalibrationRequest, EvaluationRequest, OpenRequest
from .arguments import model_args


def register(subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep", help="perplexity against sparsity: a grid of methods × sparsities × patterns, each a full run",
        description="Every point of the grid is a full pruning run from the dense model, measured by perplexity on "
                    "--eval. N:M patterns run at their own sparsity (2:4 at 50%%); sparsities given with only "
                    "N:M patterns run unstructured besides. Results: DIR/sweep.json and DIR/sweep.csv, rewritten "
                    "after every point.")
    model_args(sweep)
    sweep.add_argument("--calib", nargs="+", required=True, metavar="FILE", help="calibration text files")
    sweep.add_argument("--eval", required=True, metavar="FILE", help="text to measure perplexity on")
    sweep.add_argument("--text-field", default="text", help="field or column holding the text in JSON/CSV/Parquet")
    sweep.add_argument("--methods", nargs="+", default=["wanda"], metavar="METHOD",
                       help=f"pruning methods ({', '.join(SWEEP_METHODS)}; default wanda)")
    sweep.add_argument("--sparsities", nargs="*", type=float, default=[], metavar="S",
                       help="fractions of weights to remove, e.g. 0.3 0.5 0.7")
    sweep.add_argument("--patterns", nargs="+", default=["unstructured"], metavar="PATTERN",
                       help="unstructured (default), N:M such as 2:4 (at its own sparsity), rows, columns, blocks:HxW")
    sweep.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    sweep.add_argument("--seqlen", type=int, default=None, help="tokens per window (default min(2048, context))")
    sweep.add_argument("--eval-windows", type=int, default=None, help="at most this many evaluation windows")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--batch-size", type=int, default=0, help="windows per forward pass (default: ~4096 tokens)")
    sweep.add_argument("--blocksize", type=int, default=SparseGPTOptions.blocksize, help="SparseGPT column block size")
    sweep.add_argument("--dampening", type=float, default=SparseGPTOptions.dampening, help="SparseGPT dampening")
    sweep.add_argument("--alps-iterations", type=int, default=ALPSOptions.max_iterations,
                       help="ALPS: ADMM iterations at most")
    sweep.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run each point as a Ray task on this cluster (host:port, ray://host:port, auto, or "
                            "local for a Ray instance on this machine); needs the cluster extra")
    sweep.add_argument("--out", required=True, metavar="DIR", help="folder for sweep.json and sweep.csv")
    sweep.add_argument("--plot", metavar="FILE", help="also draw the chart to FILE.png or FILE.svg")
    sweep.set_defaults(run=run_sweep_command, show=print_sweep)


def request_of(args) -> SweepRequest:
    for path in [*args.calib, args.eval]:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file.")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg"):
        raise UserError(f"--plot {args.plot}: the chart is written as PNG or SVG; name the file .png or .svg.")
    return SweepRequest(
        model=OpenRequest(args.model, args.dtype, args.trust_remote_code),
        calibration=CalibrationRequest(tuple(args.calib), args.nsamples, args.seqlen, args.seed, args.text_field),
        evaluation=EvaluationRequest(args.eval, args.seqlen, args.eval_windows, args.text_field),
        methods=tuple(args.methods), sparsities=tuple(args.sparsities), patterns=tuple(args.patterns),
        options=MethodOptions(sparsegpt=SparseGPTOptions(blocksize=args.blocksize, dampening=args.dampening),
                              alps=ALPSOptions(max_iterations=args.alps_iterations), device=args.device,
                              batch_size=args.batch_size),
        out=args.out)


def run_sweep_command(args, job: Job) -> dict:
    request = request_of(args)
    request.points()                  # a grid that cannot run is refused before the model loads
    result = run_sweep_ray(request, args.ray, job) if args.ray else run_sweep(request, job)
    plot = str(plot_sweep(result, args.plot)) if args.plot else None
    return {**result.to_dict(), "out": str(Path(args.out)), "plot": plot}


def print_sweep(result: dict) -> None:
    dense = result["dense"]["ppl"]
    print(f"{len(result['points'])} points in {format_duration(result['seconds'])}"
          + (f" on Ray at {result['ray']}" if result.get("ray") else "") + f"; dense perplexity {dense:.3f}")
    print(f"  {'method':<10} {'pattern':<13} {'target':>7} {'achieved':>9} {'perplexity':>11} {'× dense':>8} "
          f"{'seconds':>8}")
    for p in result["points"]:
        print(f"  {p['method']:<10} {p['pattern']:<13} {p['target_sparsity']:>7.1%} {p['sparsity']:>9.2%} "
              f"{p['ppl']:>11.3f} {p['ppl'] / dense:>8.3f} {p['seconds']:>8.1f}")
    print(f"written to {result['out']}/sweep.json and sweep.csv" + (f"; chart {result['plot']}" if result["plot"]
                                                                    else ""))
