"""Scale benchmark: prune a model bigger than a small machine would like to hold, streaming from disk.

Writes a random-weight Llama of about 1.1B parameters (TinyLlama's shape: 22 blocks, hidden 2048,
intermediate 5632, 32 heads, 4 KV heads; SmolLM2's 49152-token vocabulary so its tokenizer and WikiText
calibration fit; float16, about 2.3 GB) into a temporary folder under /tmp, prunes it with each method
through `core.streaming.prune_streaming` (one subprocess per run, so each peak RSS is its own), prints
wall time and peak RSS, and deletes the folder.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scale.py                # 16 × 256 tokens, Wanda + SparseGPT
    .venv/bin/python benchmarks/scale.py --layers 2 --methods wanda             # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALIB_TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.valid.raw"
if not CALIB_TEXT.is_file():
    CALIB_TEXT = Path("/work/shared/data/wikitext-2-raw/wiki.valid.raw")
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    fork + exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_random_llama(folder: Path, layers: int, seed: int = 0, tokenizer_dir: str | None = None) -> tuple[int, int]:
    """A random float16 Llama written block by block (one shard per block), never whole in memory."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.models.demo import ensure_demo

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or ensure_demo())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, dtype="float16")
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    groups: dict[str, list[tuple[str, torch.Size]]] = {}
    for name, param in skeleton.named_parameters():
        group = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else "rest"
        groups.setdefault(group, []).append((name, param.shape))
    weight_map, total, parameters = {}, 0, 0
    for number, (group, entries) in enumerate(groups.items()):
        tensors = {}
        for name, shape in entries:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=torch.float16)
            else:
                tensors[name] = (torch.randn(shape, generator=generator) * 0.02).half()
            total += tensors[name].numel() * 2
            parameters += tensors[name].numel()
        shard = f"model-{number:05d}.safetensors"
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({name: shard for name in tensors})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return parameters, total


def child(method: str, folder: str, calib_file: str, out: str, compute_dtype: str, device: str) -> None:
    """One pruning run in its own process; prints one JSON line."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    from core.data.calibration import CalibrationSet, load_saved_calibration
    from core.pruning.plan import PrunePlan
    from core.export.streaming import prune_streaming

    baseline = peak_rss_mib()
    ids = load_saved_calibration(Path(calib_file))
    started = time.perf_counter()
    result, path = prune_streaming(folder, CalibrationSet(ids, [], 0), PrunePlan.build(method=method, device=device),
                                   out, compute_dtype=getattr(torch, compute_dtype))
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0
    print(json.dumps({"method": method, "seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(),
                      "peak_gpu_mib": gpu,
                      "rss_after_imports_mib": baseline, "sparsity": result.sparsity, "layers": len(result.layers),
                      "export_gb": sum(f.stat().st_size for f in Path(path).iterdir()) / 1e9}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the demo model's)")
    parser.add_argument("--calib-text", default=str(CALIB_TEXT), help="calibration text (WikiText-2 valid)")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "MODEL", "CALIB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, compute_dtype=args.compute_dtype, device=args.device)

    from transformers import AutoTokenizer

    from core.data.calibration import load_calibration, save_calibration

    work = Path(tempfile.mkdtemp(prefix="cs-scale-", dir="/tmp"))
    try:
        model = work / "model"
        model.mkdir()
        tic = time.perf_counter()
        parameters, size = write_random_llama(model, args.layers, tokenizer_dir=args.tokenizer)
        print(f"wrote a random Llama: {parameters / 1e9:.2f}B parameters, {size / 1e9:.2f} GB float16, "
              f"{args.layers} blocks, in {time.perf_counter() - tic:.0f} s", flush=True)
        calib = load_calibration([args.calib_text], AutoTokenizer.from_pretrained(model), nsamples=args.nsamples,
                                 seqlen=args.seqlen, seed=0)
        save_calibration(calib, work / "calibration.safetensors")
        rows = []
        for method in args.methods:
            out = work / f"pruned-{method}"
            run = subprocess.run([sys.executable, __file__, "--compute-dtype", args.compute_dtype, "--device", args.device,
                                  "--child", method,
                                  str(model), str(work / "calibration.safetensors"), str(out)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
            if run.returncode:
                sys.exit(f"{method} failed:\n{run.stderr[-3000:]}")
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(out)
        print(f"\nstreaming prune of a {parameters / 1e9:.2f}B-parameter Llama ({size / 1e9:.2f} GB float16), "
              f"calibration {args.nsamples} × {args.seqlen} tokens of WikiText-2 valid, device {args.device}, "
              f"{os.cpu_count()} threads, compute {args.compute_dtype}\n")
        print("| method | wall time (s) | peak RSS (GB) | RSS after imports (GB) | peak GPU (GB) | sparsity |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['method']} | {row['seconds']:.0f} | {row['peak_rss_mib'] / 1024:.2f} | "
                  f"{row['rss_after_imports_mib'] / 1024:.2f} | {row['peak_gpu_mib'] / 1024:.2f} | {row['sparsity']:.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
