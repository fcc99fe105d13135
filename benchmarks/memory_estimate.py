"""The memory estimate made before a run (core.pruning.footprint) against the peak resident memory the run reaches.

Each run is a fresh `compression-studio prune` process on the demo model (calibrated on WikiText-2 validation);
its peak is the child's ru_maxrss. Usage:

    .venv/bin/python benchmarks/memory_estimate.py [--nsamples 32] [--seqlen 512] [--methods wanda sparsegpt]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.models.demo import ensure_demo  # noqa: E402
from core.models.streaming import open_skeleton  # noqa: E402
from core.pruning.footprint import RunShape, estimate  # noqa: E402
from core.pruning.plan import PrunePlan  # noqa: E402

CALIB = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"
RESULTS = ROOT / "benchmarks" / "results" / "memory_estimate.jsonl"


def peak_of(command: list[str]) -> tuple[int, float]:
    """Run `command` alone; the peak RSS in bytes of the children so far, and its wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before and before:
        raise RuntimeError("ru_maxrss of children is a running maximum: run the larger case in its own process")
    return after * 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    args = parser.parse_args()
    folder = ensure_demo(None)
    model, layout, _ = open_skeleton(folder)
    base, _ = peak_of([sys.executable, "-c", "import torch, transformers, core.cli.main"])
    print(f"runtime alone: {base / 2**20:,.0f} MiB")
    for method in args.methods:         # in increasing order of memory: ru_maxrss only grows
        run = RunShape(args.nsamples, args.seqlen, torch.float32)
        predicted = estimate(model, layout, PrunePlan.build(method=method), run, streamed=False)
        with tempfile.TemporaryDirectory() as out:
            peak, seconds = peak_of([sys.executable, "-m", "core.cli", "prune", "demo", "--calib", str(CALIB),
                                     "--method", method, "--nsamples", str(args.nsamples), "--seqlen",
                                     str(args.seqlen), "--device", "cpu", "--out", f"{out}/pruned"])
        row = {"model": "demo", "method": method, "nsamples": args.nsamples, "seqlen": args.seqlen,
               "estimate_bytes": predicted.total, "peak_rss_bytes": peak, "ratio": predicted.total / peak,
               "parts": dict(predicted.parts), "runtime_alone_bytes": base, "seconds": round(seconds, 1)}
        print(f"{method}: estimate {predicted.total / 2**20:,.0f} MiB, measured peak {peak / 2**20:,.0f} MiB "
              f"({row['ratio']:.2f}x), {seconds:.0f} s")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
