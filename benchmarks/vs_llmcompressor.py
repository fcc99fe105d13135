"""Side by side with llm-compressor on the demo model: same token windows, method and pattern.

llm-compressor is not a dependency of this project: it is installed into its own virtual environment
under /tmp (torch==2.13.0 first, the CPU build, so it does not pull CUDA). Every run is a subprocess of
its own, so each peak RSS (VmHWM) is its own; it is read right after pruning, before evaluation.

Runs: the dense model's perplexity; the floor (two plain forward passes of the calibration windows
through the blocks, batched as this engine batches them); then for each method and pattern this engine
(`core.pipeline.prune`) and llm-compressor (`oneshot` with WandaPruningModifier / SparseGPTModifier,
same token windows, unshuffled). Both pruned models are scored by `core.evaluate.perplexity` on the same
WikiText-2 test windows. Wall times are of the pruning call alone (model loading excluded on both sides).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/vs_llmcompressor.py                  # the full table (~40+ min on 2 cores)
    .venv/bin/python benchmarks/vs_llmcompressor.py --nsamples 4 --seqlen 128 --eval-windows 2 --methods wanda --patterns unstructured
    .venv/bin/python benchmarks/vs_llmcompressor.py --methods sparsegpt --patterns 2:4 --seeds 0 1 2   # perplexity spread over seeds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/wikitext-2-raw")
VENV = Path("/tmp/cs-llmcompressor-venv")
LLMCOMPRESSOR = "llmcompressor==0.14.0.1"
TORCH = "torch==2.13.0"
sys.path.insert(0, str(ROOT))

# Runs inside llm-compressor's venv: prune, record time and peak RSS, save the weights for evaluation.
LLMC_CHILD = r'''
import json, sys, time
from pathlib import Path
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_model
from transformers import AutoModelForCausalLM
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

def peak_rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

model_dir, calib_file, method, pattern, out = sys.argv[1:6]
ids = load_file(calib_file)["input_ids"]
dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
structure = "0:0" if pattern == "unstructured" else pattern
sparsity = 0.5 if pattern == "unstructured" else 1 - int(pattern.split(":")[0]) / int(pattern.split(":")[1])
Modifier = WandaPruningModifier if method == "wanda" else SparseGPTModifier
recipe = Modifier(sparsity=sparsity, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])
started = time.perf_counter()
oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
seconds = time.perf_counter() - started
rss = peak_rss_mib()
save_model(model, out)
print(json.dumps({"seconds": seconds, "peak_rss_mib": rss}))
'''


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import llmcompressor, sys; sys.exit(llmcompressor.__version__ != '0.14.0.1')"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing {LLMCOMPRESSOR} into {VENV} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", LLMCOMPRESSOR], check=True)
    return python


# ---- children run in this project's venv ---------------------------------------------------------------

def child_dense(work: Path) -> dict:
    from core.models.open import open_model

    loaded = open_model("demo")
    return {"ppl": _perplexity(loaded.model, work)}


def child_floor(work: Path) -> dict:
    """Two plain forward passes of the calibration windows through every block, batched like `prune`."""
    from core.models.open import open_model
    from floor import floor_seconds

    seconds = floor_seconds(open_model("demo"), _calibration(work))
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def child_ours(work: Path, method: str, pattern: str) -> dict:
    from core.models.open import open_model
    from core.pruning.pipeline import prune
    from core.pruning.plan import PrunePlan

    from core.data.calibration import CalibrationSet

    loaded = open_model("demo")
    calib = CalibrationSet(_calibration(work), [], 0)
    started = time.perf_counter()
    prune(loaded, calib, PrunePlan.build(method=method, pattern=pattern, device="cpu"))
    seconds = time.perf_counter() - started
    rss = peak_rss_mib()
    return {"seconds": seconds, "peak_rss_mib": rss, "ppl": _perplexity(loaded.model, work)}


def child_score(work: Path, weights: str) -> dict:
    from safetensors.torch import load_model

    from core.models.open import open_model

    loaded = open_model("demo")
    load_model(loaded.model, weights)
    return {"ppl": _perplexity(loaded.model, work)}


def _calibration(work: Path):
    from core.data.calibration import load_saved_calibration

    return load_saved_calibration(work / "calibration.safetensors")


def _perplexity(model, work: Path) -> float:
    from safetensors.torch import load_file

    from core.evaluation.perplexity import perplexity

    return perplexity(model, load_file(str(work / "eval.safetensors"))["input_ids"], device="cpu").ppl


CHILDREN = {"dense": child_dense, "floor": child_floor, "ours": child_ours, "score": child_score}


def run_child(python: str, args: list[str]) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([python, *args], capture_output=True, text=True, env=env)
    if run.returncode:
        sys.exit(f"run {args[:3]} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"], choices=["magnitude", "wanda", "sparsegpt"],
                        help="magnitude runs on this engine only (the baseline of issue 2's figures)")
    parser.add_argument("--ours-only", action="store_true", help="skip llm-compressor (e.g. to re-measure this engine)")
    parser.add_argument("--save", type=Path, help="also write every row as JSON here")
    parser.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="calibration seeds: each draws its own windows, and both tools run on each")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, work, *rest = args.child
        print(json.dumps(CHILDREN[kind](Path(work), *rest)))
        return

    from core.data.calibration import load_calibration, save_calibration
    from core.models.demo import ensure_demo
    from core.evaluation.perplexity import evaluation_windows
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    llmc_python = None if args.ours_only else str(ensure_venv())
    demo = ensure_demo()
    work = Path(tempfile.mkdtemp(prefix="cs-vs-llmc-", dir="/tmp"))
    ours = [sys.executable, __file__, "--child"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(demo)
        windows = evaluation_windows(tokenizer, DATA / "wiki.test.raw", args.seqlen, args.eval_windows)
        save_file({"input_ids": windows.contiguous()}, str(work / "eval.safetensors"))
        (work / "llmc_child.py").write_text(LLMC_CHILD)
        print(f"calibration {args.nsamples} × {args.seqlen} tokens of wiki.valid.raw (seeds {args.seeds}), "
              f"evaluation {windows.shape[0]} × {args.seqlen} of wiki.test.raw, {os.cpu_count()} CPU cores", flush=True)

        def draw(seed: int) -> None:    # every child reads the windows of the seed being run
            calib = load_calibration([DATA / "wiki.valid.raw"], tokenizer, nsamples=args.nsamples, seqlen=args.seqlen,
                                     seed=seed)
            save_calibration(calib, work / "calibration.safetensors")

        draw(args.seeds[0])
        dense = run_child(sys.executable, [*ours[1:], "dense", str(work)])
        print(f"dense perplexity {dense['ppl']:.2f}", flush=True)
        floor = run_child(sys.executable, [*ours[1:], "floor", str(work)])
        print(f"floor (two forward passes through the blocks) {floor['seconds']:.1f} s", flush=True)
        rows = []
        for seed in args.seeds:
            draw(seed)
            for method in args.methods:
                for pattern in args.patterns:
                    mine = run_child(sys.executable, [*ours[1:], "ours", str(work), method, pattern])
                    print(f"seed {seed} ours {method} {pattern}: {json.dumps(mine)}", flush=True)
                    theirs = None
                    if not args.ours_only and method != "magnitude":
                        weights = work / "llmc.safetensors"
                        theirs = run_child(llmc_python, [str(work / "llmc_child.py"), str(demo),
                                                         str(work / "calibration.safetensors"), method, pattern, str(weights)])
                        theirs.update(run_child(sys.executable, [*ours[1:], "score", str(work), str(weights)]))
                        weights.unlink()
                        print(f"seed {seed} llm-compressor {method} {pattern}: {json.dumps(theirs)}", flush=True)
                    rows.append((seed, method, pattern, mine, theirs))
        print_table(args, dense, floor, rows)
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            args.save.write_text(json.dumps({"dense": dense, "floor": floor, "rows": [
                {"seed": seed, "method": m, "pattern": p, "ours": a, "llm_compressor": b}
                for seed, m, p, a, b in rows]}, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_table(args, dense: dict, floor: dict, rows: list) -> None:
    print(f"\nSmolLM2-135M (demo), CPU, calibration {args.nsamples} × {args.seqlen} (WikiText-2 valid, seeds {args.seeds}), "
          f"perplexity on {args.eval_windows} × {args.seqlen} of WikiText-2 test. Dense perplexity {dense['ppl']:.2f}; "
          f"floor (two forward passes through the blocks) {floor['seconds']:.1f} s, peak RSS {floor['peak_rss_mib'] / 1024:.2f} GB.\n")
    print("| seed | method | pattern | tool | wall time (s) | × floor | × llm-compressor | peak RSS (GB) | perplexity | ppl vs llm-compressor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed, method, pattern, mine, theirs in rows:
        for tool, run in (("this engine", mine), ("llm-compressor 0.14", theirs)):
            if run is None:
                continue
            vs_time = f"{run['seconds'] / theirs['seconds']:.2f}" if theirs else "–"
            vs_ppl = f"{(run['ppl'] / theirs['ppl'] - 1) * 100:+.1f}%" if theirs else "–"
            print(f"| {seed} | {method} | {pattern} | {tool} | {run['seconds']:.1f} | {run['seconds'] / floor['seconds']:.2f} | "
                  f"{vs_time} | {run['peak_rss_mib'] / 1024:.2f} | {run['ppl']:.2f} | {vs_ppl} |")
    if len(args.seeds) > 1:
        print_seed_summary(rows)


def print_seed_summary(rows: list) -> None:
    """Per method and pattern, over the seeds: each tool's perplexity range, and ours over theirs."""
    import statistics

    print("\n| method | pattern | this engine ppl (min–max) | llm-compressor ppl (min–max) | ours / theirs per seed | mean |")
    print("|---|---|---|---|---|---|")
    for method, pattern in dict.fromkeys((m, p) for _, m, p, _, _ in rows):
        pairs = [(a["ppl"], b["ppl"] if b else None) for _, m, p, a, b in rows if (m, p) == (method, pattern)]
        ours = [a for a, _ in pairs]
        theirs = [b for _, b in pairs if b is not None]
        ratios = [(a / b - 1) * 100 for a, b in pairs if b is not None]
        span = lambda v: f"{statistics.mean(v):.2f} ({min(v):.2f}–{max(v):.2f})" if v else "–"
        print(f"| {method} | {pattern} | {span(ours)} | {span(theirs)} | "
              f"{', '.join(f'{r:+.1f}%' for r in ratios) or '–'} | {f'{statistics.mean(ratios):+.1f}%' if ratios else '–'} |")


if __name__ == "__main__":
    main()
