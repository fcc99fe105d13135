"""Issue 12's sensitivity-profile figures on the demo model: wall time, the ten most sensitive layers, and
how well the fast ranking (the method's output error on the calibration inputs) agrees with the measured one
(Spearman's ρ over every layer).

Protocol (the issue's): unit layer, Wanda 50% unstructured, perplexity over the first 8 × 512 tokens of
WikiText-2 *test* per unit, calibration on WikiText-2 *validation* (128 × 512 tokens, seed 0 by default),
the model in float32 on the CPU. Each run appends one row to benchmarks/results/profile.jsonl, and every
finished unit is appended to benchmarks/results/profile-units.partial.jsonl as it comes (so a run stopped
early still shows where it got).

    OMP_WAIT_POLICY=PASSIVE nice .venv/bin/python benchmarks/sensitivity_profile.py                      # the full protocol
    nice .venv/bin/python benchmarks/sensitivity_profile.py --nsamples 4 --seqlen 128 --eval-windows 1   # a loaded machine
"""

from __future__ import annotations

import argparse
import json
import sys
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
RESULTS = ROOT / "benchmarks" / "results" / "profile.jsonl"
PARTIAL = ROOT / "benchmarks" / "results" / "profile-units.partial.jsonl"
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core import workbench as wb  # noqa: E402
from core.events import Job  # noqa: E402
from core.studies.profile_file import save_profile  # noqa: E402
from core.studies.sensitivity import ProfileRequest, UnitProfiled, run_profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--unit", default="layer")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also save the profile JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    PARTIAL.write_text("")

    def on_event(event):
        if isinstance(event, UnitProfiled):
            e = event.entry
            with PARTIAL.open("a") as f:
                f.write(json.dumps({"done": event.done, "total": event.total, "name": e.name, "error": e.error,
                                    "delta_ppl": e.delta_ppl, "seconds": e.seconds}) + "\n")

    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest(args.model), Job())
    wb.calibrate(bench, wb.CalibrationRequest((str(DATA / "wiki.valid.raw"),), args.nsamples, args.seqlen, 0), Job())
    opened = time.perf_counter() - started
    request = ProfileRequest(unit=args.unit, method=args.method, sparsity=args.sparsity,
                             eval_path=str(DATA / "wiki.test.raw"), eval_windows=args.eval_windows,
                             eval_seqlen=args.seqlen, device=args.device)
    profile = run_profile(bench, request, Job(on_event))
    if args.out:
        save_profile(profile, args.out)
    fast_top = sorted(profile.entries, key=lambda e: -e.error)[:10]
    row = {
        "model": args.model, "unit": args.unit, "method": args.method, "sparsity": args.sparsity,
        "calibration": f"{args.nsamples} x {args.seqlen} WikiText-2 validation",
        "evaluation": f"{profile.eval_windows} x {profile.eval_seqlen} WikiText-2 test",
        "device": args.device, "threads": torch.get_num_threads(), "units": len(profile.entries),
        "dense_ppl": profile.dense_ppl, "wall_seconds": profile.seconds, "stats_pass_seconds": profile.stats_seconds,
        "open_and_calibrate_seconds": opened, "spearman_fast_vs_measured": profile.spearman,
        "top10_measured": [[e.name, e.delta_ppl] for e in profile.ranked()[:10]],
        "top10_fast": [[e.name, e.error] for e in fast_top],
        "load_average": os.getloadavg()[0],
    }
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
