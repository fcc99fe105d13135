"""Issue 12 §4 on the demo model: pruning calibrated on text the model writes itself against WikiText-2.

Protocol (reduced, for a loaded 2-core CPU; the full one is 128 × 2048): calibration 32 windows × 512 tokens,
seed 0, either self-generated (`core.data.generated`: from the BOS token, temperature 1.5 → 1.0 over the first
32 tokens, top-p 0.95) or drawn from WikiText-2 *validation*; perplexity over the first 20 non-overlapping
512-token windows of WikiText-2 *test* (joined by "\\n\\n"). Wanda and SparseGPT at 50% unstructured and 2:4,
through the same engine jobs as the CLI and the studio (`core.workbench`), one process, the runs interleaved so
each pair (self-generated, WikiText-2) finishes together. Rows append to a JSON-lines file as they finish.

    nice .venv/bin/python benchmarks/self_calibration.py                      # 8 runs + dense
    nice .venv/bin/python benchmarks/self_calibration.py --nsamples 128 --seqlen 2048 --eval-windows 40
    .venv/bin/python benchmarks/self_calibration.py --markdown                # the table from the results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
RESULTS = ROOT / "benchmarks" / "results" / "self_calibration.jsonl"
sys.path.insert(0, str(ROOT))

RUNS = [("wanda", "50%"), ("wanda", "2:4"), ("sparsegpt", "50%"), ("sparsegpt", "2:4")]
SOURCES = ("self-generated", "wikitext-2 valid")


def measure(args) -> None:
    from core import workbench as wb
    from core.data.generated import GenerationOptions
    from core.pruning.plan import PrunePlan

    bench = wb.Workbench(remember=True)
    wb.open_model(bench, wb.OpenRequest("demo"))
    protocol = {"nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
                "eval": f"wiki.test.raw, first {args.eval_windows} windows x {args.seqlen}"}
    evaluation = wb.EvaluationRequest(str(DATA / "wiki.test.raw"), args.seqlen, args.eval_windows)
    dense = wb.evaluate(bench, evaluation).dense
    write({"row": "dense", "ppl": dense.ppl, "seconds": dense.seconds, **protocol})
    calibrations = {}
    for source in SOURCES:
        request = wb.CalibrationRequest((str(DATA / "wiki.valid.raw"),) if source != "self-generated" else (),
                                        args.nsamples, args.seqlen, args.seed,
                                        generate=GenerationOptions() if source == "self-generated" else None)
        started = time.perf_counter()
        calibrations[source] = (wb.calibrate(bench, request), request)
        seconds = time.perf_counter() - started
        calib = calibrations[source][0]
        write({"row": f"calibration {source}", "seconds": seconds, "source": calib.describe().get("source", "files"),
               "sample": calib.describe().get("sample"), **protocol})
    for method, target in RUNS:
        for source in SOURCES:
            if args.only and f"{method} {target}" not in args.only:
                continue
            bench.calib, bench.calib_request = calibrations[source]
            pattern, sparsity = (target, None) if ":" in target else ("unstructured", int(target.rstrip("%")) / 100)
            plan = PrunePlan.build(method=method, pattern=pattern, sparsity=sparsity, device="cpu")
            record = wb.prune(bench, plan)
            ppl = wb.evaluate(bench, evaluation).pruned
            write({"row": f"{method} {target} {source}", "method": method, "target": target, "calibration": source,
                   "sparsity": record.result.sparsity, "ppl": ppl.ppl, "ppl_dense": dense.ppl,
                   "prune_seconds": record.result.seconds, "eval_seconds": ppl.seconds, **protocol})


def write(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "sample"}), file=sys.stderr, flush=True)


def markdown(path: Path = RESULTS) -> str:
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["row"]] = row          # the latest run of a row wins
    dense = rows.get("dense", {}).get("ppl")
    lines = ["| method | target | self-generated ppl | × dense | WikiText-2 valid ppl | × dense |",
             "|---|---|---:|---:|---:|---:|"]
    for method, target in RUNS:
        cells = []
        for source in SOURCES:
            row = rows.get(f"{method} {target} {source}")
            cells += [f"{row['ppl']:.2f}", f"{row['ppl'] / dense:.2f}"] if row and dense else ["", ""]
        lines.append(f"| {method} | {target} | " + " | ".join(cells) + " |")
    return f"dense: {dense:.2f}\n\n" + "\n".join(lines) + "\n" if dense else "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="runs to measure, e.g. 'wanda 50%%'")
    parser.add_argument("--markdown", action="store_true", help="print the table from the results file")
    args = parser.parse_args()
    if args.markdown:
        print(markdown())
        return
    measure(args)


if __name__ == "__main__":
    main()
