"""Issue 10's quality table on the demo model: methods, allocation and recovery, on two calibration domains.

Protocol: calibration 64 windows × 512 tokens (seed 0) of WikiText-2 *validation*; perplexity over the
first 40 non-overlapping 512-token windows of WikiText-2 *test* (joined by "\\n\\n"). The second domain
calibrates on text the demo model writes itself (sampled from its BOS token, seed 0, cached under
~/.cache/compression-studio/) and is scored on WikiText-2 test and on a held-out part of that text.

Every row runs in a subprocess of its own (its peak RSS, VmHWM, is its own), through the same engine
jobs as the CLI (`core.workbench`). Rows append to a JSON-lines file as they finish, so an interrupted
table keeps what it has; `--markdown` rewrites the table from that file.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/quality.py --rows core        # the targets' rows
    .venv/bin/python benchmarks/quality.py --rows all                                 # every row (hours)
    .venv/bin/python benchmarks/quality.py --only "sparsegpt 2:4 uniform blockwise wiki"
    .venv/bin/python benchmarks/quality.py --markdown                                 # table from the results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
RESULTS = ROOT / "benchmarks" / "results" / "quality.jsonl"
SELF_TEXT = Path.home() / ".cache" / "compression-studio" / "demo-self-text-seed0.txt"
sys.path.insert(0, str(ROOT))

NSAMPLES, SEQLEN, EVAL_WINDOWS = 64, 512, 40
METHODS = ("magnitude", "wanda", "sparsegpt", "alps")
TARGETS = ("50%", "70%", "2:4")


def row_name(method, target, allocation="uniform", recovery="none", domain="wiki") -> str:
    return f"{method} {target} {allocation} {recovery} {domain}"


def all_rows() -> list[str]:
    rows = ["dense - - - wiki", "dense - - - self"]
    for target in TARGETS:
        for method in METHODS:
            for allocation in (("uniform", "owl") if target != "2:4" else ("uniform",)):
                for recovery in ("none", "blockwise"):
                    rows.append(row_name(method, target, allocation, recovery))
    for method in ("sparsegpt", "alps"):
        for target in ("50%", "2:4"):
            for recovery in ("none", "blockwise"):
                rows.append(row_name(method, target, "uniform", recovery, "self"))
    return rows


CORE = [     # the rows the targets need, most telling first
    "dense - - - wiki",
    row_name("sparsegpt", "2:4"), row_name("alps", "2:4"), row_name("sparsegpt", "50%"), row_name("alps", "50%"),
    row_name("wanda", "70%"), row_name("wanda", "70%", "owl"),
    row_name("sparsegpt", "2:4", recovery="blockwise"), row_name("alps", "2:4", recovery="blockwise"),
    row_name("alps", "50%", recovery="blockwise"),
    row_name("wanda", "50%"), row_name("wanda", "50%", "owl"),
    "dense - - - self",
    row_name("sparsegpt", "2:4", domain="self"), row_name("sparsegpt", "2:4", recovery="blockwise", domain="self"),
]


# ------------------------------------------------------------------ the second domain


def self_text(path: Path = SELF_TEXT, documents: int = 48, tokens: int = 560, seed: int = 0) -> Path:
    """Text the demo model writes itself, sampled from its BOS token; made once and cached."""
    if path.is_file():
        return path
    import torch

    from core import workbench as wb

    bench = wb.Workbench(remember=False)
    loaded = wb.open_model(bench, wb.OpenRequest("demo"))
    tok, model = loaded.tokenizer, loaded.model
    torch.manual_seed(seed)
    texts = []
    started = time.perf_counter()
    for start in range(0, documents, 16):
        prompt = torch.full((16, 1), tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                 temperature=1.0, top_p=0.95, max_new_tokens=tokens, min_new_tokens=tokens,
                                 pad_token_id=tok.eos_token_id)
        texts += [tok.decode(row[1:], skip_special_tokens=True).strip() for row in out]
        print(f"self text: {len(texts)}/{documents} documents, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(texts) + "\n")
    return path


def split_self_text(path: Path) -> tuple[Path, Path]:
    """The first 80% of the documents for calibration, the rest held out for evaluation."""
    documents = path.read_text().split("\n\n")
    cut = int(len(documents) * 0.8)
    calib, held = path.with_suffix(".calib.txt"), path.with_suffix(".heldout.txt")
    calib.write_text("\n\n".join(documents[:cut]))
    held.write_text("\n\n".join(documents[cut:]))
    return calib, held


# ------------------------------------------------------------------ one row, in its own process


def run_one(name: str) -> dict:
    from core import workbench as wb
    from core.evaluation.perplexity import evaluation_windows, perplexity
    from core.pruning.allocation import AllocationOptions
    from core.pruning.plan import PrunePlan
    from core.recovery.options import RecoveryOptions

    method, target, allocation, recovery, domain = name.split()
    bench = wb.Workbench(remember=False)
    loaded = wb.open_model(bench, wb.OpenRequest("demo"))
    evals = {"wiki test": str(DATA / "wiki.test.raw")}
    if domain == "self":
        calib_file, held = split_self_text(self_text())
        evals["self held-out"] = str(held)
    else:
        calib_file = DATA / "wiki.valid.raw"
    result = {"row": name}

    def measure():
        for label, path in evals.items():
            windows = evaluation_windows(loaded.tokenizer, path, SEQLEN, EVAL_WINDOWS)
            result[f"ppl {label}"] = perplexity(loaded.model, windows).ppl

    if method == "dense":
        measure()
        return result
    wb.calibrate(bench, wb.CalibrationRequest((str(calib_file),), NSAMPLES, SEQLEN, 0))
    pattern, sparsity = (target, None) if ":" in target else ("unstructured", int(target.rstrip("%")) / 100)
    plan = PrunePlan.build(method=method, pattern=pattern, sparsity=sparsity, device="cpu",
                           allocation=AllocationOptions(allocation), recovery=RecoveryOptions(recovery))
    record = wb.prune(bench, plan)
    recovery_seconds = sum(c.seconds for c in record.result.recovery)
    result.update(
        sparsity=record.result.sparsity,
        prune_seconds=record.result.seconds - recovery_seconds,
        recovery_seconds=recovery_seconds,
        peak_rss_mib=_peak_rss_mib(),
        block_sparsity=record.plan.blocks.sparsity if record.plan.blocks is not None else None,
        recovered_error=[[c.before, c.after] for c in record.result.recovery],
    )
    measure()
    return result


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ the table


def load_results(path: Path = RESULTS) -> dict[str, dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["row"]: row for row in rows}      # the latest run of a row wins


def markdown(results: dict[str, dict]) -> str:
    dense = {d: results.get(f"dense - - - {d}", {}) for d in ("wiki", "self")}
    lines = ["| calibration | method | target | allocation | recovery | sparsity | ppl wiki test | × dense "
             "| ppl self held-out | prune s | recovery s | peak RSS MiB |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in all_rows():
        row = results.get(name)
        if row is None:
            continue
        method, target, allocation, recovery, domain = name.split()
        wiki, base = row.get("ppl wiki test"), dense[domain].get("ppl wiki test")
        ratio = f"{wiki / base:.2f}" if wiki and base and method != "dense" else ""
        held = row.get("ppl self held-out")
        lines.append(
            f"| {'WikiText-2 valid' if domain == 'wiki' else 'self-generated'} | {method} | {target} | {allocation} "
            f"| {recovery} | {_pct(row.get('sparsity'))} | {_num(wiki)} | {ratio} | {_num(held)} "
            f"| {_num(row.get('prune_seconds'), 0)} | {_num(row.get('recovery_seconds'), 0)} "
            f"| {_num(row.get('peak_rss_mib'), 0)} |")
    return "\n".join(lines) + "\n"


def _num(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", choices=["core", "all"], help="which rows to run")
    parser.add_argument("--only", nargs="+", default=[], help="run these rows (names as in the results file)")
    parser.add_argument("--skip-done", action="store_true", help="leave out rows the results file already has")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--markdown", action="store_true", help="print the table from the results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child)))
        return
    rows = list(args.only) or (CORE if args.rows == "core" else all_rows() if args.rows == "all" else [])
    if args.skip_done:
        done = load_results(args.results)
        rows = [r for r in rows if r not in done]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"}
    for name in rows:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_seconds"] = time.perf_counter() - started
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: wiki {row.get('ppl wiki test', float('nan')):.2f}, "
              f"{row['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    if args.markdown or rows:
        print(markdown(load_results(args.results)), end="")


if __name__ == "__main__":
    main()
