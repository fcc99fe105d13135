"""Issue 12's sweep of the demo model: perplexity against sparsity for Wanda, SparseGPT and ALPS, and its chart.

Reduced protocol (the full one, 128 × 2048 calibration tokens and the whole test set, takes hours a point on
this shared 2-core machine, where seven jobs ran at once: a Wanda point at 2 × 512 took 4 minutes there):
calibration 8 windows × 512 tokens (seed 0) of WikiText-2 *validation*; perplexity over the first 4
non-overlapping 512-token windows of WikiText-2 *test*; float32 on the CPU. Wanda and SparseGPT at 20, 40,
60 and 80 % unstructured; ALPS, several times slower a point, at 50 % (--sparsities 0.1 0.2 … 0.8 and
--nsamples/--eval-windows give the fuller sweep on a machine of one's own). Each method group is one `run_sweep` (one load, one calibration, one
dense evaluation); every point is written to benchmarks/results/sweep.jsonl as it finishes, the chart to
docs/sweep-demo.png and .svg after each group, by `core.studies.sweep_plot` (the CLI's renderer).

    nice .venv/bin/python benchmarks/sweep.py                       # the demo sweep (tens of minutes)
    .venv/bin/python benchmarks/sweep.py --nsamples 4 --eval-windows 2 --sparsities 0.5 --alps-sparsities
    .venv/bin/python benchmarks/sweep.py --plot-only               # redraw the chart from the results file
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
RESULTS = ROOT / "benchmarks" / "results" / "sweep.jsonl"
CHART = ROOT / "docs" / "sweep-demo.png"
sys.path.insert(0, str(ROOT))

from core import workbench as wb  # noqa: E402
from core.studies.sweep import run_sweep  # noqa: E402
from core.studies.sweep_plot import plot_sweep  # noqa: E402
from core.studies.sweep_points import MethodOptions, PointFinished, SweepRequest, SweepResult  # noqa: E402

NSAMPLES, SEQLEN, EVAL_WINDOWS = 8, 512, 4
SPARSITIES = (0.2, 0.4, 0.6, 0.8)
ALPS_SPARSITIES = (0.5,)


def request(methods, sparsities, nsamples, eval_windows, out) -> SweepRequest:
    return SweepRequest(
        model=wb.OpenRequest("demo"),
        calibration=wb.CalibrationRequest((str(DATA / "wiki.valid.raw"),), nsamples, SEQLEN, 0),
        evaluation=wb.EvaluationRequest(str(DATA / "wiki.test.raw"), SEQLEN, eval_windows),
        methods=tuple(methods), sparsities=tuple(sparsities), options=MethodOptions(device="cpu"), out=out)


def protocol(args) -> dict:
    return {"model": "demo", "calibration": f"wiki.valid.raw {args.nsamples}x{SEQLEN} seed 0",
            "evaluation": f"wiki.test.raw first {args.eval_windows}x{SEQLEN}", "device": "cpu", "dtype": "float32"}


def merged(results: list[SweepResult]) -> SweepResult:
    """The groups' points on one chart (same model, calibration and text: the same dense perplexity)."""
    first = results[0]
    return SweepResult(request=first.request, model=first.model, calibration=first.calibration,
                       evaluation=first.evaluation, dense=first.dense,
                       points=[p for r in results for p in r.points], status="finished")


def from_results(path: Path) -> SweepResult:
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    dense = next(l for l in reversed(lines) if l.get("row") == "dense")
    points = [PointFinished.from_row(l["point"]) for l in lines if l.get("row") == "point"]
    return SweepResult(request={}, model=dense["model"], calibration=dense["calibration"],
                       evaluation=dense["evaluation"], dense=dense["dense"], points=points, status="finished")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=NSAMPLES)
    parser.add_argument("--eval-windows", type=int, default=EVAL_WINDOWS)
    parser.add_argument("--sparsities", type=float, nargs="*", default=SPARSITIES)
    parser.add_argument("--alps-sparsities", type=float, nargs="*", default=ALPS_SPARSITIES)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--out", default="/tmp/compression-studio-sweep-demo", help="the sweeps' own folders")
    parser.add_argument("--plot-only", action="store_true", help="redraw the chart from the results file and stop")
    args = parser.parse_args()
    if args.plot_only:
        result = from_results(args.results)
        for suffix in (".png", ".svg"):
            plot_sweep(result, args.chart.with_suffix(suffix), title=_title(args, result))
        return
    args.results.parent.mkdir(parents=True, exist_ok=True)
    groups = [(("wanda", "sparsegpt"), args.sparsities), (("alps",), args.alps_sparsities)]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started, done = time.perf_counter(), []

    def write(line: dict) -> None:
        print(json.dumps(line), flush=True)
        with args.results.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def finished(point, dense) -> None:
        write({"row": "point", **protocol(args), "point": point.row()})
        partial.points.append(point)
        partial.dense = partial.dense or dense()
        draw(merged([*done, partial]))

    def draw(chart: SweepResult) -> None:       # after every point: a sweep cut short still has its chart
        for suffix in (".png", ".svg"):
            plot_sweep(chart, args.chart.with_suffix(suffix), title=_title(args, chart))

    for index, (methods, sparsities) in enumerate(groups):
        if not sparsities:
            continue
        tic = time.perf_counter()
        req = request(methods, sparsities, args.nsamples, args.eval_windows, f"{args.out}/{'-'.join(methods)}")
        partial = SweepResult(request={})
        saved = Path(req.out) / "sweep.json"
        result = run_sweep(req, on_point=lambda p: finished(p, lambda: _saved(saved, partial)))
        write({"row": "dense", **protocol(args), "methods": list(methods), "model": result.model,
               "calibration": result.calibration, "evaluation": result.evaluation, "dense": result.dense,
               "group_wall_seconds": time.perf_counter() - tic})
        done.append(result)
        draw(merged(done))
    write({"row": "total", **protocol(args), "points": sum(len(r.points) for r in done),
           "wall_seconds": time.perf_counter() - started})


def _saved(path: Path, into: SweepResult) -> dict:
    """The dense perplexity, model, calibration and text of a running sweep, from the file it keeps up to date."""
    saved = json.loads(path.read_text())
    into.model, into.calibration, into.evaluation = saved["model"], saved["calibration"], saved["evaluation"]
    return saved["dense"]


def _title(args, result: SweepResult) -> str:
    windows = result.evaluation.get("windows", args.eval_windows)
    return (f"SmolLM2-135M (demo): WikiText-2 test perplexity vs sparsity\n"
            f"reduced protocol: calibration {result.calibration.get('nsamples', args.nsamples)}×{SEQLEN} "
            f"validation tokens, evaluation {windows}×{SEQLEN} test tokens")


if __name__ == "__main__":
    main()
