"""Issue 13's structured rows: what `prune --structure` saves on the demo model and what it costs.

Protocol (as `compression_stack.py`): calibration 64 windows × 512 tokens (seed 0) of WikiText-2
*validation*; perplexity over the first 40 non-overlapping 512-token windows of WikiText-2 *test*; the model
in float32 on the CPU. Each row removes 10, 20 or 30 % of the model's parameters (embeddings included),
MLP channels alone or one key/value group in three (3 of 9 heads) plus MLP channels for the rest, with
FLAP's fluctuation score and bias compensation. The export is written for real and its bytes read off
disk; "forward" is the median of 3 forward passes over one 512-token window, "decode" the time to
generate 32 tokens greedily after a 16-token prompt (median of 3), both against the dense model's.
Rows "+ recovery" train every shrunk block's kept weights towards the dense block's outputs (`--recover
blockwise`, its defaults: 1 epoch, steps of 2 windows, lr 1e-3). Beside them the seeds' mask patterns at
50 % with Wanda (`--pattern rows|columns|blocks:64x64`): zeros stored in dense shapes, so their size and
speed are the dense model's (not timed).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/structured.py                 # every row
    .venv/bin/python benchmarks/structured.py --only dense "mlp 20%" --nsamples 8 --eval-windows 4
    .venv/bin/python benchmarks/structured.py --markdown                             # the table from the results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
RESULTS = ROOT / "benchmarks" / "results" / "structured.jsonl"
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core import workbench as wb  # noqa: E402
from core.evaluation.perplexity import evaluation_windows, perplexity  # noqa: E402
from core.export.folder import write_export  # noqa: E402
from core.export.writers import folder_weight_bytes  # noqa: E402
from core.pruning.plan import PrunePlan  # noqa: E402
from core.pruning.structure.run import shrink  # noqa: E402
from core.pruning.structure.spec import StructureSpec  # noqa: E402
from core.recovery.options import RecoveryOptions  # noqa: E402

NSAMPLES, SEQLEN, EVAL_WINDOWS = 64, 512, 40
# name -> (fraction of all parameters to remove, KV groups removed per block, blockwise recovery)
ROWS = {"dense": (0.0, 0, False), **{f"mlp {p}%": (p / 100, 0, False) for p in (10, 20, 30)},
        **{f"mlp+heads {p}%": (p / 100, 1, False) for p in (10, 20, 30)},
        **{f"mlp {p}% + recovery": (p / 100, 0, True) for p in (10, 20, 30)},
        **{f"mlp+heads {p}% + recovery": (p / 100, 1, True) for p in (10, 20, 30)}}
MASKS = {f"{pattern} 50% {method}": (method, pattern) for pattern in ("rows", "columns", "blocks:64x64")
         for method in ("wanda", "sparsegpt")}


def spec_for(config, total: int, fraction: float, groups: int) -> StructureSpec:
    """The mlp and heads fractions that remove `fraction` of `total` parameters, `groups` KV groups a block."""
    blocks, hidden, d = config.num_hidden_layers, config.hidden_size, config.head_dim
    size = config.num_attention_heads // config.num_key_value_heads
    heads_removed = blocks * groups * (2 * size * d + 2 * d) * hidden
    channels = round((fraction * total - heads_removed) / (blocks * 3 * hidden))
    return StructureSpec(mlp=channels / config.intermediate_size, heads=groups / config.num_key_value_heads)


def timings(model, window: torch.Tensor) -> dict:
    with torch.no_grad():
        forward = []
        for _ in range(3):
            tic = time.perf_counter()
            model(input_ids=window[None], use_cache=False)
            forward.append(time.perf_counter() - tic)
        decode = []
        for _ in range(3):
            tic = time.perf_counter()
            model.generate(window[None, :16], max_new_tokens=32, min_new_tokens=32, do_sample=False)
            decode.append(time.perf_counter() - tic)
    return {"forward_512_s": statistics.median(forward), "decode_32_s": statistics.median(decode)}


def row(name: str, nsamples: int, eval_windows: int) -> dict:
    bench = wb.Workbench(remember=False)
    loaded = wb.open_model(bench, wb.OpenRequest("demo"))
    total = sum(p.numel() for p in loaded.model.parameters())
    windows = evaluation_windows(loaded.tokenizer, DATA / "wiki.test.raw", SEQLEN, eval_windows)
    record = {"row": name, "nsamples": nsamples, "seqlen": SEQLEN, "eval_windows": eval_windows,
              "load_average": os.getloadavg()[0]}    # the CPU is shared: timings taken under this load
    if name in MASKS:
        return mask_row(bench, loaded, windows, record)
    fraction, groups, recovering = ROWS[name]
    calib, result = None, None
    if fraction:
        spec = spec_for(loaded.model.config, total, fraction, groups)
        calib = wb.calibrate(bench, wb.CalibrationRequest((str(DATA / "wiki.valid.raw"),), nsamples, SEQLEN, 0))
        result = shrink(loaded, calib, spec, recovery=RecoveryOptions("blockwise" if recovering else "none"))
        record.update(structure=spec.describe(), shrink_s=result.seconds, removed=result.removed_fraction,
                      config=result.describe() | {"blocks": None, "recovery_blocks": None})
        if recovering:
            record["recovery"] = {"options": result.recovery.describe(),
                                  "error_before": [c.before for c in result.curves],
                                  "error_after": [c.after for c in result.curves]}
    record["parameters"] = sum(p.numel() for p in loaded.model.parameters())
    record["ppl"] = perplexity(loaded.model, windows).ppl
    with tempfile.TemporaryDirectory() as work:
        out = write_export(loaded, Path(work) / "out", {"structure": result.describe() if result else None}, calib)
        record["bytes"] = folder_weight_bytes(out)
    record.update(timings(loaded.model.eval(), windows[0]))
    return record


def mask_row(bench, loaded, windows, record: dict) -> dict:
    """A mask pattern at 50 %: pruned in place, zeros stored; shapes, bytes and speed are the dense model's."""
    method, pattern = MASKS[record["row"]]
    wb.calibrate(bench, wb.CalibrationRequest((str(DATA / "wiki.valid.raw"),), record["nsamples"], SEQLEN, 0))
    run = wb.prune(bench, PrunePlan.build(method=method, sparsity=0.5, pattern=pattern))
    record.update(structure=f"mask {pattern} 50% {method}", shrink_s=run.seconds, sparsity=run.sparsity,
                  parameters=sum(p.numel() for p in loaded.model.parameters()),
                  ppl=perplexity(loaded.model, windows).ppl, mask=True)
    return record


def markdown(rows: list[dict]) -> str:
    """One table; each row against the dense row of its own protocol (calibration windows, eval windows)."""
    protocol = lambda r: (r["nsamples"], r["seqlen"], r["eval_windows"])  # noqa: E731
    dense_of = {protocol(r): r for r in rows if r["row"] == "dense"}
    lines = ["| row | protocol (calib × eval windows) | structure | parameters | removed | ppl | ppl × dense | "
             "MiB on disk | forward 512 × dense | decode 32 × dense |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        dense = dense_of.get(protocol(r))
        if dense is None:
            continue
        head = f"| {r['row']} | {r['nsamples']}×{r['seqlen']} / {r['eval_windows']} | {r.get('structure', '')} |"
        if r.get("mask"):
            lines.append(f"{head} {r['parameters']:,} (zeros stored) | {r['sparsity']:.1%} of block linears zero | "
                         f"{r['ppl']:.2f} | {r['ppl'] / dense['ppl']:.3f} | = dense | = dense | = dense |")
            continue
        lines.append(f"{head} {r['parameters']:,} | {1 - r['parameters'] / dense['parameters']:.1%} | {r['ppl']:.2f} | "
                     f"{r['ppl'] / dense['ppl']:.3f} | {r['bytes'] / 2**20:.1f} | "
                     f"{r['forward_512_s'] / dense['forward_512_s']:.2f} | {r['decode_32_s'] / dense['decode_32_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=[*ROWS, *MASKS], help="these rows (default: all)")
    parser.add_argument("--nsamples", type=int, default=NSAMPLES)
    parser.add_argument("--eval-windows", type=int, default=EVAL_WINDOWS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--markdown", action="store_true", help="print the table of the results file and stop")
    args = parser.parse_args()
    if args.markdown:
        print(markdown([json.loads(l) for l in args.results.read_text().splitlines() if l.strip()]))
        return
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or [*ROWS, *MASKS]:
        record = row(name, args.nsamples, args.eval_windows)
        print(json.dumps(record), flush=True)
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
