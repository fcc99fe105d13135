"""Figures for the engine (issue 2): wall time, peak RSS and WikiText-2 perplexity of each method on the demo model.

Protocol: calibration 64 windows × 512 tokens drawn (seed 0) from WikiText-2 *valid*; evaluation on the first 40
non-overlapping windows × 512 of WikiText-2 *test* joined as "\\n\\n".join(rows); CPU, float32. Every configuration
runs in its own process, so peak RSS is that run's alone.

    .venv/bin/python benchmarks/engine_figures.py                # all configurations, a table at the end
    .venv/bin/python benchmarks/engine_figures.py --quick        # 8 × 256 / 8 × 256: a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
CONFIGS = [("dense", None)] + [(m, p) for p in ("unstructured", "2:4") for m in ("magnitude", "wanda", "sparsegpt")]


def run_one(method: str, pattern: str | None, nsamples: int, seqlen: int, eval_windows: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from core.calibration import load_calibration
    from core.evaluate import evaluation_windows, perplexity
    from core.models import open_model
    from core.pipeline import prune
    from core.plan import PrunePlan

    started = time.perf_counter()
    loaded = open_model("demo")
    windows = evaluation_windows(loaded.tokenizer, DATA / "wiki.test.raw", seqlen, eval_windows)
    prune_seconds = 0.0
    if method != "dense":
        calib = load_calibration([DATA / "wiki.valid.raw"], loaded.tokenizer, nsamples=nsamples, seqlen=seqlen, seed=0)
        result = prune(loaded, calib, PrunePlan.build(method=method, pattern=pattern, device="cpu"))
        prune_seconds = result.seconds
    ppl = perplexity(loaded.model, windows, device="cpu")
    return {"method": method, "pattern": pattern or "-", "prune_seconds": round(prune_seconds, 1),
            "process_seconds": round(time.perf_counter() - started, 1), "ppl": round(ppl.ppl, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "nsamples": nsamples, "seqlen": seqlen, "eval_windows": ppl.windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="method[:pattern] to run, e.g. wanda:2:4")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "PATTERN"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine_figures.json")
    args = parser.parse_args()
    nsamples, seqlen, eval_windows = (8, 256, 8) if args.quick else (64, 512, 40)
    if args.one:
        method, pattern = args.one
        print(json.dumps(run_one(method, None if pattern == "-" else pattern, nsamples, seqlen, eval_windows)))
        return
    rows = []
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    for method, pattern in CONFIGS:
        if args.only and not any(o == method or o == f"{method}:{pattern}" for o in args.only):
            continue
        command = [sys.executable, __file__, "--one", method, pattern or "-"] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            sys.exit(f"{method} {pattern} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n| method | pattern | prune s | process s | peak RSS MB | ppl |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['pattern']} | {r['prune_seconds']} | {r['process_seconds']} | {r['peak_rss_mb']} | {r['ppl']} |")


if __name__ == "__main__":
    main()
