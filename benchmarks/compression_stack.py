"""Issue 11's table: what pruning + quantization saves on the demo model, and what it costs in quality.

Protocol (the engine's quality protocol): calibration 64 windows × 512 tokens (seed 0) of WikiText-2
*validation*; perplexity over the first 40 non-overlapping 512-token windows of WikiText-2 *test*. The model
is held in float32 (the CPU computes in it); every export is written for real and its bytes read off disk.
"linear bytes" are the decoder blocks' linear layers alone (their tensors in the file: codes, positions,
scales), against those layers' bytes at fp16 (2 bytes per weight).

Each row runs in a subprocess of its own through the same engine jobs as the CLI (`core.workbench`); rows
append to a JSON-lines file as they finish. llm-compressor's GPTQ (int4, symmetric, group 64 through its
`config_groups`) runs in its own virtual environment, as `vs_llmcompressor.py` sets it up, on the same
windows; its weights are scored by this engine's perplexity.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/compression_stack.py            # every row (~1.5 h, 2 cores)
    .venv/bin/python benchmarks/compression_stack.py --only "gptq int4 g64" llm-compressor
    .venv/bin/python benchmarks/compression_stack.py --markdown                         # the table from the results
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
RESULTS = ROOT / "benchmarks" / "results" / "compression_stack.jsonl"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NSAMPLES, SEQLEN, EVAL_WINDOWS = 64, 512, 40

# name -> (method, pattern, quantization as CLI-like dict or None)
ROWS = {
    "dense": ("none", None, None),
    "sparsegpt 50%": ("sparsegpt", "unstructured", None),
    "sparsegpt 2:4": ("sparsegpt", "2:4", None),
    "gptq int8": ("none", None, dict(bits=8, group_size=64)),
    "rtn int8": ("none", None, dict(bits=8, group_size=64, method="rtn")),
    "gptq int4 g64": ("none", None, dict(bits=4, group_size=64)),
    "gptq int4 g64 act-order": ("none", None, dict(bits=4, group_size=64, act_order=True)),
    "rtn int4 g64": ("none", None, dict(bits=4, group_size=64, method="rtn")),
    "sparsegpt 50% + gptq int4": ("sparsegpt", "unstructured", dict(bits=4, group_size=64)),
    "sparsegpt 2:4 + gptq int4": ("sparsegpt", "2:4", dict(bits=4, group_size=64)),
    "sparsegpt 2:4 + gptq int4 act-order": ("sparsegpt", "2:4", dict(bits=4, group_size=64, act_order=True)),
    "sparsegpt 2:4 + int4 joint": ("sparsegpt", "2:4", dict(bits=4, group_size=64, joint=True)),
    "llm-compressor": None,
}

LLMC_GPTQ = r'''
import json, sys, time
import torch
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier

model_dir, calib_file, out = sys.argv[1:4]
ids = load_file(calib_file)["input_ids"]
dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
scheme = {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                              "strategy": "group", "group_size": 64}}
recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], dampening_frac=0.01)
started = time.perf_counter()
oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
seconds = time.perf_counter() - started
with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
    keys = set(f.keys())
state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k in keys}
save_file(state, out)
print(json.dumps({"seconds": seconds}))
'''


def child_row(work: Path, name: str) -> dict:
    """One row: run the plan through the workbench, score it, export every format it can be written in."""
    from core import workbench as wb
    from core.pruning.plan import PrunePlan
    from core.quantization.scheme import QuantScheme

    method, pattern, quant = ROWS[name]
    bench = _bench(work)
    result = {"row": name}
    if name != "dense":
        plan = PrunePlan.build(method=method, pattern=pattern, device="cpu",
                               quantization=QuantScheme(**quant) if quant else None)
        started = time.perf_counter()
        record = wb.prune(bench, plan)
        result["seconds"] = time.perf_counter() - started
        result["sparsity"] = record.result.sparsity
        result["mean_quant_error"] = _mean([l.quant_error for l in record.result.layers if l.quant_error is not None])
    result["ppl"] = _perplexity(bench.loaded.model, work)
    if name == "dense":
        result["bytes"], result["linear_bytes"] = _dense_sizes(bench, work)
    else:
        result["bytes"], result["linear_bytes"] = _export_sizes(bench, work, name)
    result["linear_fp16_bytes"] = 2 * bench.loaded.layout.prunable_parameters
    return result


def _bench(work: Path):
    from core import workbench as wb
    from core.data.calibration import CalibrationSet, load_saved_calibration

    bench = wb.Workbench(remember=False)
    wb.open_model(bench, wb.OpenRequest("demo"))
    bench.calib = CalibrationSet(load_saved_calibration(work / "calibration.safetensors"), [], 0)
    return bench


def _dense_sizes(bench, work: Path) -> tuple[dict, dict]:
    from core.export.folder import write_export
    from core.export.gguf import export_gguf
    from core.export.writers import folder_weight_bytes

    layers = [l.full_name for b in bench.loaded.layout.inventory for l in b.linears]
    hf = write_export(bench.loaded, work / "dense-hf", {}, overwrite=True)
    gguf = export_gguf(bench.loaded, work / "dense-gguf", {}, "f16", overwrite=True)
    sizes = {"hf": folder_weight_bytes(hf), "gguf": folder_weight_bytes(gguf), "gguf_type": "f16"}
    linear = {"hf": _linear_bytes(hf, layers)}
    shutil.rmtree(hf), shutil.rmtree(gguf)
    return sizes, linear


def _export_sizes(bench, work: Path, name: str) -> tuple[dict, dict]:
    from core import workbench as wb

    sizes, linear = {}, {}
    plan = bench.applied.plan
    formats = ["hf", "gguf"] + (["compressed-tensors"] if plan.quantizing else []) + \
        (["compact"] if str(plan.pattern) == "2:4" else [])
    layers = [l.full_name for b in bench.loaded.layout.inventory for l in b.linears]
    for fmt in formats:
        out = work / f"export-{fmt}"
        request = wb.ExportRequest(str(out), overwrite=True, format=fmt)
        try:
            exported = wb.export_run(bench, request)
        except Exception as exc:            # a format refused is a row entry, not a crash
            sizes[fmt] = f"refused: {exc}"
            continue
        sizes[fmt] = exported.weight_bytes
        linear[fmt] = _linear_bytes(out, layers)
        if fmt == "gguf":
            sizes["gguf_type"] = request.gguf_type_for(plan)
        shutil.rmtree(out, ignore_errors=True)
    return sizes, linear


def _linear_bytes(folder: Path, layers: list[str]) -> int | None:
    """Bytes of every tensor belonging to the given linear layers, from the safetensors headers."""
    import struct

    total, files = 0, [p for p in folder.glob("*.safetensors") if p.name != "calibration.safetensors"]
    if not files:
        return None
    prefixes = tuple(f"{name}." for name in layers)
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for key, info in header.items():
            if key != "__metadata__" and key.startswith(prefixes):
                start, stop = info["data_offsets"]
                total += stop - start
    return total


def child_llmc_score(work: Path, weights: str) -> dict:
    from safetensors.torch import load_file

    from core.models.open import open_model

    loaded = open_model("demo")
    missing, unexpected = loaded.model.load_state_dict(load_file(weights), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    return {"ppl": _perplexity(loaded.model, work)}


def _perplexity(model, work: Path) -> float:
    from safetensors.torch import load_file

    from core.evaluation.perplexity import perplexity

    return perplexity(model, load_file(str(work / "eval.safetensors"))["input_ids"], device="cpu").ppl


def _mean(values):
    return sum(values) / len(values) if values else None


def run_child(python: str, args: list[str]) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([python, *args], capture_output=True, text=True, env=env)
    if run.returncode:
        raise RuntimeError(f"run {args[:4]} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_llm_compressor(work: Path, demo: Path) -> dict:
    from vs_llmcompressor import ensure_venv

    python = str(ensure_venv())
    (work / "llmc_gptq.py").write_text(LLMC_GPTQ)
    weights = work / "llmc.safetensors"
    row = run_child(python, [str(work / "llmc_gptq.py"), str(demo), str(work / "calibration.safetensors"), str(weights)])
    row.update(run_child(sys.executable, [__file__, "--child", "llmc_score", str(work), str(weights)]))
    weights.unlink()
    return {"row": "llm-compressor", **row}


def prepare(work: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from core.data.calibration import load_calibration, save_calibration
    from core.evaluation.perplexity import evaluation_windows
    from core.models.demo import ensure_demo

    demo = ensure_demo()
    tokenizer = AutoTokenizer.from_pretrained(demo)
    windows = evaluation_windows(tokenizer, DATA / "wiki.test.raw", SEQLEN, EVAL_WINDOWS)
    save_file({"input_ids": windows.contiguous()}, str(work / "eval.safetensors"))
    calib = load_calibration([DATA / "wiki.valid.raw"], tokenizer, nsamples=NSAMPLES, seqlen=SEQLEN, seed=0)
    save_calibration(calib, work / "calibration.safetensors")
    return demo


def markdown(results: Path = RESULTS) -> str:
    rows = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        rows[row["row"]] = row                   # the latest measurement of each row
    dense = rows.get("dense", {}).get("ppl") or _dense_from_quality_table()
    llmc = rows.get("llm-compressor")
    head = ("| row | perplexity | × dense | seconds | hf MiB | compressed-tensors MiB | GGUF MiB (type) | compact MiB | "
            "linear layers ÷ fp16 (best format) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name in ROWS:
        row = rows.get(name)
        if row is None:
            continue
        sizes, linear = row.get("bytes", {}), row.get("linear_bytes", {})
        mib = lambda fmt: f"{sizes[fmt] / 2**20:.1f}" if isinstance(sizes.get(fmt), int) else "–"
        ratios = {fmt: b / row["linear_fp16_bytes"] for fmt, b in linear.items() if b}
        best = min(ratios, key=ratios.get) if ratios else None
        gguf = f"{mib('gguf')} ({sizes.get('gguf_type', '')})" if "gguf" in sizes else "–"
        ratio = f"{ratios[best]:.3f} ({best})" if best else "–"
        times = f"{row['seconds']:.0f}" if row.get("seconds") else "–"
        versus = f"{row['ppl'] / dense:.3f}" if dense else "–"
        lines.append(f"| {name} | {row['ppl']:.2f} | {versus} | {times} | {mib('hf')} | {mib('compressed-tensors')} | "
                     f"{gguf} | {mib('compact')} | {ratio} |")
    for name in ("gptq int4 g64", "gptq int4 g64 act-order"):
        if llmc and name in rows:
            ours = rows[name]
            lines.append(f"\nllm-compressor 0.14 GPTQ int4 g64 (same windows): perplexity {llmc['ppl']:.2f} in "
                         f"{llmc['seconds']:.0f} s; this engine's {name} {ours['ppl']:.2f} in {ours['seconds']:.0f} s "
                         f"({ours['ppl'] / llmc['ppl'] - 1:+.1%} perplexity, {ours['seconds'] / llmc['seconds']:.2f}× "
                         "the time).")
    return "\n".join(lines) + "\n"


def _dense_from_quality_table() -> float | None:
    """The dense perplexity on the same protocol from issue 10's table, when this table has no dense row yet."""
    quality = RESULTS.parent / "quality.jsonl"
    if not quality.is_file():
        return None
    rows = [json.loads(line) for line in quality.read_text().splitlines()]
    return next((r["ppl wiki test"] for r in reversed(rows) if r["row"] == "dense - - - wiki"), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="run these rows only")
    parser.add_argument("--markdown", action="store_true", help="print the table from the saved results")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, work, *rest = args.child
        child = {"row": child_row, "llmc_score": child_llmc_score}[kind]
        print(json.dumps(child(Path(work), *rest)))
        return
    if args.markdown:
        print(markdown(), end="")
        return
    work = Path(tempfile.mkdtemp(prefix="cs-stack-", dir="/tmp"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        demo = prepare(work)
        for name in args.only or list(ROWS):
            try:
                row = run_llm_compressor(work, demo) if name == "llm-compressor" else \
                    run_child(sys.executable, [__file__, "--child", "row", str(work), name])
            except RuntimeError as exc:
                print(f"{name}: failed\n{exc}", flush=True)
                continue
            row["measured"] = time.strftime("%Y-%m-%d %H:%M")
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        print(markdown(), end="")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
