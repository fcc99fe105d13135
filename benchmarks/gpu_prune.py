"""Pruning on a GPU, timed: the demo model's architecture through the whole pipeline on CUDA.

For a lent GPU that has no demo model and no network: the demo's architecture is built from
`benchmarks/demo-config.json` with random weights (speed depends on the shapes, not the values), and the
calibration windows come from real WikiText-2 text through a tokenizer folder given on the command
line. Runs each method × pattern at the reference protocol (128 windows × 2048 tokens, seed 0) and
prints wall time, peak GPU memory and the achieved sparsity; with --check-cpu it also prunes a
2-block slice on the CPU and on the GPU and reports how far the two results are apart.

    python benchmarks/gpu_prune.py --tokenizer TOKENIZER_DIR --calib wiki.valid.raw [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from core.pruning import pipeline  # noqa: E402
from core.models.architectures import weight_matrix  # noqa: E402
from core.data.calibration import load_calibration  # noqa: E402
from core.pruning.plan import PrunePlan  # noqa: E402

from gpu_bench import load  # noqa: E402
from profile_block import first_blocks  # noqa: E402


def random_demo(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    loaded = load("config", HERE / "demo-config.json")
    return dataclasses.replace(loaded, tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir))


def timed_prune(loaded, calib, plan) -> dict:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = pipeline.prune(loaded, calib, plan)
    if cuda:
        torch.cuda.synchronize()
    return {"method": plan.method, "pattern": str(plan.pattern), "seconds": round(time.perf_counter() - started, 2),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0,
            "sparsity": round(result.sparsity, 4), "layers": len(result.layers), "device": result.device}


def cpu_against_gpu(tokenizer_dir: Path, calib_file: Path, method: str, pattern: str, device: str) -> dict:
    """Prune the first 2 blocks on the CPU and on `device` from the same weights; compare masks and kept weights."""
    states = {}
    for device in ("cpu", device):
        loaded = first_blocks(random_demo(tokenizer_dir), 2)
        calib = load_calibration([calib_file], loaded.tokenizer, nsamples=16, seqlen=512, seed=0)
        pipeline.prune(loaded, calib, PrunePlan.build(method=method, pattern=pattern, device=device))
        states[device] = {name: weight_matrix(layer).detach().clone()
                          for name, layer in loaded.model.named_modules()
                          if isinstance(layer, nn.Linear) and (".layers.0." in name or ".layers.1." in name)}
    same_mask = total = 0
    worst = 0.0
    for name, cpu in states["cpu"].items():
        gpu = states[device][name]
        same_mask += int(((cpu == 0) == (gpu == 0)).sum())
        total += cpu.numel()
        kept = (cpu != 0) & (gpu != 0)
        worst = max(worst, float((cpu[kept] - gpu[kept]).norm() / cpu[kept].norm()))
    return {"method": method, "pattern": pattern, "mask_agreement": round(same_mask / total, 6),
            "worst_kept_relative_difference": worst}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a folder holding the demo model's tokenizer files")
    parser.add_argument("--calib", required=True, help="WikiText-2 valid (wiki.valid.raw)")
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--check-cpu", action="store_true", help="also compare a 2-block prune on CPU and GPU")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N (cpu only to try the script out)")
    parser.add_argument("--out", default=None, help="folder for gpu-prune.json")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("[gpu_prune] no CUDA device: nothing to measure", file=sys.stderr)
        return 1
    rows, checks = [], []
    if args.check_cpu:
        for method in args.methods:
            try:
                checks.append(cpu_against_gpu(Path(args.tokenizer), Path(args.calib), method, "2:4", args.device))
            except Exception as exc:       # report and go on: one failure must not hide the other figures
                checks.append({"method": method, "failed": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(checks[-1]), flush=True)
    loaded = random_demo(Path(args.tokenizer))
    calib = load_calibration([args.calib], loaded.tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    dense = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    for method in args.methods:
        for pattern in args.patterns:
            loaded.model.load_state_dict(dense)
            plan = PrunePlan.build(method=method, pattern=pattern, device=args.device)
            try:
                rows.append(timed_prune(loaded, calib, plan))
            except Exception as exc:
                rows.append({"method": method, "pattern": pattern, "seconds": None, "peak_gpu_gib": None,
                             "sparsity": None, "failed": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"\ndemo architecture (random weights), {args.nsamples} × {args.seqlen} calibration tokens, {name}\n")
    print("| method | pattern | wall s | peak GPU GiB | sparsity | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['pattern']} | {r['seconds']} | {r['peak_gpu_gib']} | {r['sparsity']} | "
              f"{r.get('failed', '')} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu-prune.json").write_text(json.dumps({"device": name, "runs": rows, "cpu_vs_gpu": checks},
                                                                  indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
