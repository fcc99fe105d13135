"""Where a block's time goes: the real pipeline on the first blocks of the demo model, timed by its events.

For each method: statistics pass (block forward with hooks), prune (the layers' solves), propagate
(pruned block forward with the error probe), against the floor measured in the same process: two plain
forward passes of the same windows through the same blocks.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_block.py --blocks 2 --nsamples 64 --seqlen 512
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

import sys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"

from core.data.calibration import load_calibration  # noqa: E402
from core.events import BlockStarted, Finished, Job, Phase  # noqa: E402
from core.models.open import open_model  # noqa: E402
from core.pruning.pipeline import prune  # noqa: E402
from core.pruning.plan import PrunePlan  # noqa: E402
from floor import floor_seconds  # noqa: E402


def first_blocks(loaded, count):
    layout = dataclasses.replace(loaded.layout, blocks=nn.ModuleList(list(loaded.layout.blocks)[:count]),
                                 inventory=loaded.layout.inventory[:count])
    return dataclasses.replace(loaded, layout=layout)


class PhaseClock:
    """Adds up the time between consecutive events under the name of the phase that was running."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.current, self.since = None, time.perf_counter()

    def __call__(self, event):
        now = time.perf_counter()
        if self.current:
            self.totals[self.current] = self.totals.get(self.current, 0.0) + now - self.since
        self.current = event.name if isinstance(event, Phase) else ("load block" if isinstance(event, BlockStarted) else None)
        if isinstance(event, Finished):
            self.current = None
        self.since = now


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--pattern", default="unstructured")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    loaded = open_model("demo")
    ids = load_calibration([DATA], loaded.tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=0).input_ids
    part = first_blocks(loaded, args.blocks)
    floor = floor_seconds(part, ids)
    print(f"demo model, first {args.blocks} blocks, {args.nsamples} × {args.seqlen} tokens, "
          f"{torch.get_num_threads()} threads; floor (two plain forward passes): {floor / args.blocks:.2f} s per block\n")
    print("| method | phase | s per block | × floor |")
    print("|---|---|---|---|")
    for method in args.methods:
        loaded = open_model("demo")
        part = first_blocks(loaded, args.blocks)
        clock = PhaseClock()
        from core.data.calibration import CalibrationSet

        started = time.perf_counter()
        prune(part, CalibrationSet(ids, [], 0), PrunePlan.build(method=method, pattern=args.pattern, device="cpu"), Job(clock))
        total = time.perf_counter() - started
        for phase, seconds in sorted(clock.totals.items(), key=lambda kv: -kv[1]):
            print(f"| {method} | {phase} | {seconds / args.blocks:.2f} | {seconds / floor:.2f} |")
        print(f"| {method} | **total** | {total / args.blocks:.2f} | {total / floor:.2f} |")


if __name__ == "__main__":
    main()
