"""The subcommands: arguments in, engine jobs called in order, one result dict out."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import workbench as wb
from ..compute import KERNEL_DTYPES
from ..crashlog import write_crash_log
from ..data.generated import GenerationOptions
from ..errors import UserError
from ..events import Job
from ..evaluation.zero_shot import evaluate_tasks
from ..export.compact import unpack_folder
from ..inputs import parse_bytes, parse_tokens
from ..kernels.benchmark import BenchOptions
from ..kernels.hopper import add_bench_arguments, bench_choices
from ..pruning.methods import METHODS
from ..pruning.allocation import KINDS as ALLOCATIONS, AllocationOptions
from ..pruning.methods.alps import Options as ALPSOptions
from ..pruning.methods.sparsegpt import Options
from ..pruning.plan import PrunePlan
from ..recovery.options import MODES as RECOVERY_MODES, RecoveryOptions
from ..workbench import CalibrationRequest, EvaluationRequest, ExportRequest, OpenRequest
from .arguments import model_args, quant_scheme, quantize_args
from .memory import fit_memory
from . import profile as profile_cli
from . import sweep as sweep_cli
from .output import print_human
from .progress import Progress
from .structured import run_structure
from .zero_shot import eval_request, eval_task_args, prune_request, prune_task_args, show_with_tasks

EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not a usage dump
        raise UserError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compression-studio", description="Prune and quantize language models, and export them.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    prune = sub.add_parser("prune", help="prune a model and export it")
    model_args(prune)
    prune.add_argument("--calib", nargs="+", default=[], metavar="FILE",
                       help="calibration text files (none, or 'generated': text the model writes itself, seeded)")
    prune.add_argument("--text-field", default="text", help="field or column holding the text in JSON/CSV/Parquet")
    prune.add_argument("--method", default=None, choices=[*METHODS, "flap"],
                       help="the criterion (default wanda; with --structure flap, FLAP's fluctuation score)")
    prune.add_argument("--structure", metavar="mlp=F,heads=G", help="remove fractions of MLP channels and attention heads")
    prune.add_argument("--sparsity", type=float, default=None, help="fraction of weights to remove (default 0.5)")
    prune.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, 4:8 or any N:M (N kept of M), or whole "
                       "rows, columns or blocks:HxW (e.g. blocks:64x64) at --sparsity")
    prune.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    prune.add_argument("--seqlen", type=int, default=None, help="tokens per window (default min(2048, context))")
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--ignore", nargs="*", default=[], metavar="GLOB", help="layer names to keep dense")
    prune.add_argument("--override", nargs="*", default=[], metavar="GLOB=SPARSITY", help="per-layer sparsity")
    prune.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    prune.add_argument("--dampening", type=float, default=0.01, help="SparseGPT dampening, fraction of mean diag(H)")
    prune.add_argument("--no-update", action="store_true", help="SparseGPT: choose the mask only, no weight update")
    prune.add_argument("--alps-iterations", type=int, default=ALPSOptions.max_iterations,
                       help="ALPS: ADMM iterations at most (it stops once the support is stable)")
    prune.add_argument("--alps-rho", type=float, default=ALPSOptions.rho, help="ALPS: initial ADMM penalty ρ")
    prune.add_argument("--alps-refit-steps", type=int, default=ALPSOptions.refit_steps,
                       help="ALPS: conjugate-gradient steps refitting the kept weights")
    prune.add_argument("--allocation", default="uniform", choices=list(ALLOCATIONS),
                       help="sparsity per decoder block: the same everywhere, or OWL's outlier-weighted allocation")
    prune.add_argument("--owl-lambda", type=float, default=AllocationOptions.owl_lambda,
                       help="OWL: how far a block's sparsity may move from the target (default 0.08)")
    prune.add_argument("--owl-threshold", type=float, default=AllocationOptions.owl_threshold,
                       help="OWL: a score is an outlier above this many times its block's mean (default 5)")
    prune.add_argument("--profile", metavar="PROFILE.json", default=None,
                       help="with --allocation sensitivity: the profile (from `compression-studio profile`) whose "
                            "sensitive blocks get less sparsity and robust ones more")
    prune.add_argument("--min-sparsity", type=float, default=None,
                       help="with --allocation sensitivity: no block below this (default target − 0.25)")
    prune.add_argument("--max-sparsity", type=float, default=None,
                       help="with --allocation sensitivity: no block above this (default target + 0.25, at most 0.95)")
    prune.add_argument("--recover", default="none", choices=list(RECOVERY_MODES), nargs="?", const="blockwise",
                       help="train the kept weights back after pruning: blockwise (each block towards the dense "
                            "block's outputs; the default when given alone) or e2e (the whole model towards the dense "
                            "model's token distributions; needs the model twice in memory)")
    prune.add_argument("--recover-epochs", type=float, default=RecoveryOptions.epochs,
                       help="recovery: passes over the calibration windows")
    prune.add_argument("--recover-steps", type=int, default=0, help="recovery: optimizer steps (overrides epochs)")
    prune.add_argument("--recover-lr", type=float, default=RecoveryOptions.learning_rate, help="recovery: learning rate")
    prune.add_argument("--recover-batch", type=int, default=RecoveryOptions.batch_windows,
                       help="recovery: calibration windows per optimizer step")
    prune.add_argument("--batch-size", type=int, default=0, help="windows per forward pass (default: ~4096 tokens)")
    prune.add_argument("--eval", metavar="FILE", help="text to measure perplexity on, before and after")
    prune.add_argument("--eval-windows", type=int, default=None, help="at most this many evaluation windows")
    prune_task_args(prune)
    prune.add_argument("--out", required=True, help="output folder")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    prune.add_argument("--stream", action="store_true",
                       help="read one decoder block at a time from a safetensors folder and write the export as it goes "
                            "(for models larger than memory; --eval is not available: run `eval` on the output)")
    prune.add_argument("--memory-budget", type=parse_bytes, default=None, metavar="SIZE",
                       help="spill calibration activations to disk beyond this size, e.g. 4GB")
    prune.add_argument("--compact", action="store_true", help="the same as --format compact")
    prune.add_argument("--no-memory-check", action="store_true",
                       help="run as asked even where the estimate says it will not fit in memory (by default such a "
                            "run is streamed from disk, or its activations spilled, or it is refused)")
    quantize_args(prune, default=None)
    prune.set_defaults(run=run_prune, show=show_with_tasks("prune"))

    quantize = sub.add_parser("quantize", help="quantize a dense model (GPTQ or round-to-nearest) and export it")
    model_args(quantize)
    quantize_args(quantize, default="int4")
    own = {a.dest for a in quantize._actions}
    for action in prune._actions:      # the run options prune and quantize share, by the same names
        if action.dest in QUANTIZE_SHARES and action.dest not in own:
            quantize._add_action(action)
    pruning_only = {a.dest: a.default for a in prune._actions if a.dest not in QUANTIZE_SHARES | {"help"}}
    quantize.set_defaults(run=run_prune, show=show_with_tasks("quantize"), **{**pruning_only, "method": "none"})

    evaluate = sub.add_parser("eval", help="perplexity of a model on a text file, zero-shot accuracy on tasks")
    model_args(evaluate)
    evaluate.add_argument("--data", metavar="FILE", help="text to measure perplexity on")
    evaluate.add_argument("--text-field", default="text")
    evaluate.add_argument("--seqlen", type=int, default=None, help="tokens per window (default min(2048, context))")
    evaluate.add_argument("--eval-windows", type=int, default=None)
    eval_task_args(evaluate)
    evaluate.set_defaults(run=run_eval, show=show_with_tasks("eval"))

    inspect = sub.add_parser("inspect", help="list decoder blocks and their prunable linear layers")
    model_args(inspect)
    inspect.set_defaults(run=run_inspect)

    bench = sub.add_parser("bench", help="time 2:4 sparse kernels against dense for the model's linear shapes")
    bench.add_argument("model", help="a model folder, a .gguf file, a cached hub id, or 'demo'")
    bench.add_argument("--dtype", default="fp16", choices=list(KERNEL_DTYPES), help="kernel dtype on the GPU")
    bench.add_argument("--tokens", default="1,16,128,512,2048,8192", help="comma-separated token counts")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument("--no-int8", action="store_true", help="skip the int8 cases")
    bench.add_argument("--no-end-to-end", action="store_true", help="kernel cases only")
    bench.add_argument("--prompt-tokens", type=int, default=128, help="end to end: prompt length")
    bench.add_argument("--new-tokens", type=int, default=32, help="end to end: tokens generated")
    bench.add_argument("--csv", metavar="FILE", help="also write every measurement as CSV")
    bench.add_argument("--markdown", metavar="FILE", help="also write the results table as Markdown")
    bench.add_argument("--trust-remote-code", action="store_true", help="run the model authors' own code")
    bench.add_argument("--json", action="store_true", help="print the whole report as one JSON object on stdout")
    add_bench_arguments(bench)
    bench.set_defaults(run=run_bench)

    unpack = sub.add_parser("unpack", help="turn a compact 2:4 folder back into an ordinary dense folder")
    unpack.add_argument("folder", help="a folder written by prune --compact")
    unpack.add_argument("--out", required=True, help="output folder")
    unpack.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    unpack.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
    unpack.set_defaults(run=run_unpack)

    profile_cli.register(sub)
    sweep_cli.register(sub)
    return parser


QUANTIZE_SHARES = {"calib", "text_field", "nsamples", "seqlen", "seed", "ignore", "dampening", "batch_size", "eval",
                   "no_memory_check", "eval_tasks", "eval_limit", "tasks_dir",
                   "eval_windows", "out", "overwrite", "memory_budget", "model", "device", "dtype",
                   "trust_remote_code", "json", "quantize", "group_size", "symmetric", "act_order",
                   "quant_method", "joint", "format", "gguf_type"}


def _check_files(paths: list[str], what: str) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{what} file {path}: no such file.")


def run_prune(args, job: Job) -> dict:
    tasks = prune_request(args)
    if args.structure and tasks:
        raise UserError(f"--eval-tasks does not combine with --structure yet: run `eval {args.out} --tasks ...`.")
    if args.structure:
        return run_structure(args, job)
    if args.method == "flap":
        raise UserError("flap ranks whole MLP channels and attention heads: use it with --structure mlp=F,heads=G.")
    if args.stream and args.eval:
        raise UserError("--eval loads the whole model, which --stream avoids: drop --eval and run "
                        f"`compression-studio eval {args.out} --data FILE` afterwards.")
    plan = PrunePlan.build(
        method=args.method or "wanda", sparsity=args.sparsity, pattern=args.pattern, overrides=tuple(args.override),
        ignore=tuple(args.ignore), device=args.device, batch_size=args.batch_size,
        sparsegpt=Options(blocksize=args.blocksize, dampening=args.dampening, update_weights=not args.no_update),
        alps=ALPSOptions(rho=args.alps_rho, max_iterations=args.alps_iterations, refit_steps=args.alps_refit_steps),
        allocation=AllocationOptions(args.allocation, args.owl_lambda, args.owl_threshold, profile=args.profile,
                                     min_sparsity=args.min_sparsity, max_sparsity=args.max_sparsity),
        recovery=RecoveryOptions(args.recover, epochs=args.recover_epochs, steps=args.recover_steps,
                                 learning_rate=args.recover_lr, batch_windows=args.recover_batch),
        quantization=quant_scheme(args),
    )
    if args.compact and args.format not in ("auto", "compact"):
        raise UserError(f"--compact and --format {args.format} ask for two formats: keep one.")
    export = ExportRequest(args.out, args.overwrite, "compact" if args.compact else args.format, args.gguf_type)
    export.check(plan, streamed=args.stream, job=job)
    generate = GenerationOptions() if args.calib in ([], ["generated"]) else None
    if generate is not None:
        job.message("no --calib file: calibrating on text the model writes itself (self-generated, seed "
                    f"{args.seed}); give --calib FILE to use your own")
    else:
        _check_files(args.calib, "calibration")
    if args.eval:
        _check_files([args.eval], "evaluation")
    if not args.no_memory_check:
        fit_memory(args, plan, export, job)
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, OpenRequest(args.model, args.dtype, args.trust_remote_code, stream=args.stream), job)
    wb.check_export(bench, export, plan)          # the checks that need the model (GGUF's architectures)
    if args.profile:
        profile_cli.load_for(args.profile, bench.loaded)    # refused when measured on another model
    wb.calibrate(bench, CalibrationRequest(() if generate else tuple(args.calib), args.nsamples, args.seqlen,
                                           args.seed, args.text_field, generate), job)
    evaluation = EvaluationRequest(args.eval, args.seqlen, args.eval_windows, args.text_field) if args.eval else None
    if evaluation:
        wb.evaluate(bench, evaluation, job)
    if tasks:
        evaluate_tasks(bench, tasks, job)
    record = wb.prune(bench, plan, job, memory_budget=args.memory_budget, export=export if args.stream else None)
    if evaluation:
        wb.evaluate(bench, evaluation, job)
    if tasks:
        evaluate_tasks(bench, tasks, job)
    exported = None if record.exported else wb.export_run(bench, export, job)
    return _prune_summary(record, record.exported or exported.path, exported)


def _prune_summary(record, out, exported=None) -> dict:
    compact = exported.compact if exported else None
    result = record.result
    return {
        "method": record.method, "pattern": record.pattern, "target_sparsity": record.target_sparsity,
        "sparsity": result.sparsity, "layers": len(result.layers),
        "skipped": [vars(s) for s in result.skipped], "seconds": result.seconds,
        "ppl_dense": record.ppl_dense.ppl if record.ppl_dense else None, "ppl": record.ppl.ppl if record.ppl else None,
        "out": str(out), "zero_shot": record.zero_shot.describe() if record.zero_shot is not None else None,
        "compact": {"layers": compact.layers, "bytes": compact.compact_bytes, "dense_bytes": compact.dense_bytes,
                    "ratio": compact.ratio} if compact else None,
        "allocation": record.plan.blocks.describe() if record.plan.blocks is not None else None,
        "recovery": {**record.plan.recovery.describe(), "seconds": sum(c.seconds for c in result.recovery),
                     "blocks": [c.describe() for c in result.recovery]} if result.recovery else None,
        "quantization": _quant_summary(record) if record.plan.quantizing else None,
        "export": {"format": exported.format, "bytes": exported.weight_bytes,
                   "description": exported.description} if exported else None,
    }


def _quant_summary(record) -> dict:
    layers = [l for l in record.result.layers if l.name in record.result.quantized]
    errors = [l.quant_error for l in layers if l.quant_error is not None]
    groups = sorted({record.result.quantized[l.name].group_size for l in layers})
    return {**record.plan.quantization.describe(), "layers": len(layers), "group_sizes": groups,
            "mean_quant_error": sum(errors) / len(errors) if errors else None}


def run_eval(args, job: Job) -> dict:
    tasks = eval_request(args)
    if args.data:
        _check_files([args.data], "evaluation")
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, OpenRequest(args.model, args.dtype, args.trust_remote_code), job)
    out = {"model": args.model, "zero_shot": evaluate_tasks(bench, tasks, job).describe() if tasks else None}
    if args.data:
        result = wb.evaluate(bench, EvaluationRequest(args.data, args.seqlen, args.eval_windows, args.text_field),
                             job).dense
        out.update({"ppl": result.ppl, "nll": result.nll, "windows": result.windows, "seqlen": result.seqlen,
                    "tokens": result.tokens, "seconds": result.seconds})
    return out


def run_inspect(args, job: Job) -> dict:
    bench = wb.Workbench(remember=False)
    loaded = wb.open_model(bench, OpenRequest(args.model, args.dtype, args.trust_remote_code), job)
    layout = loaded.layout
    return {
        "model": args.model, "family": layout.family, "model_class": layout.model_class,
        "blocks_path": layout.blocks_path, "context_length": loaded.context_length,
        "prunable_parameters": layout.prunable_parameters,
        "total_parameters": sum(p.numel() for p in loaded.model.parameters()),
        "blocks": [{"name": b.name, "layers": [{"name": l.name, "shape": list(l.shape), "parameters": l.parameters}
                                                for l in b.linears]} for b in layout.inventory],
    }


def run_bench(args, job: Job) -> dict:
    options = BenchOptions(tokens=parse_tokens(args.tokens), dtype=args.dtype, int8=not args.no_int8,
                           device=args.device, end_to_end=not args.no_end_to_end,
                           prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, **bench_choices(args))
    options.validate()
    for path in (args.csv, args.markdown):
        if path:
            _check_writable(path)
    bench = wb.Workbench(remember=False)
    wb.open_model(bench, OpenRequest(args.model, trust_remote_code=args.trust_remote_code), job)
    report = wb.benchmark(bench, options, job)
    if args.csv:
        Path(args.csv).write_text(report.to_csv())
    if args.markdown:
        Path(args.markdown).write_text(report.to_markdown())
    return {**report.to_dict(), "markdown": report.to_markdown()}


def _check_writable(path: str) -> None:
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist.")


def run_unpack(args, job: Job) -> dict:
    if not Path(args.folder).is_dir():
        raise UserError(f"{args.folder}: no such folder.")
    out = unpack_folder(args.folder, args.out, overwrite=args.overwrite, job=job)
    return {"folder": args.folder, "out": str(out)}


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class Interrupts:
    """The SIGINT handler: the first Ctrl-C stops the job, which removes what it wrote; a second one exits at
    once (a partial export it leaves is locked to this process, and the next export to that folder removes it)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(EXIT_INTERRUPTED)
        print("\ninterrupted: stopping and removing what was written (Ctrl-C again to quit at once)",
              file=sys.stderr)
        raise KeyboardInterrupt


@contextmanager
def _handling_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, Interrupts())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def os_error_line(exc: OSError) -> str:
    where = exc.filename or "a file"
    if exc.errno == errno.ENOSPC:
        return f"the disk ran out of space writing {where}: free some space and run again."
    return f"{where}: {exc.strerror or exc}: check the path and its permissions and run again."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    progress = None
    try:
        with _handling_interrupts():
            args = build_parser().parse_args(argv)
            if args.command is None:
                raise UserError("choose a subcommand: prune, quantize, eval, inspect, bench, unpack, profile or sweep "
                                "(compression-studio alone opens the studio)")
            _quiet_transformers()
            progress = Progress(enabled=True)
            result = args.run(args, Job(progress))
            progress.close()
    except (UserError, OSError) as exc:
        if progress:
            progress.close()
        line = os_error_line(exc) if isinstance(exc, OSError) else str(exc)
        print(f"error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line here, the whole traceback in a log file
        if progress:
            progress.close()
        log = write_crash_log(exc, "compression-studio " + " ".join(argv))
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
        if log is None:
            traceback.print_exc()
        where = f"the traceback is in {log}" if log else "the traceback is above"
        print(f"error: an unexpected failure (a bug): {detail}; {where}; please report it.", file=sys.stderr)
        return EXIT_BUG
    if args.json:
        print(json.dumps(result, default=str))
    elif getattr(args, "show", None):
        args.show(result)
    else:
        print_human(args.command, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
