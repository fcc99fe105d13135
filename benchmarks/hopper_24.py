"""2:4 on Hopper (issue 14), as one script for one H200 in about 10 minutes.

1. Kernels on Llama-8B-shaped layers (and the demo's) in bf16: dense, 2:4 through torch's semi-structured
   subclass, cuSPARSELt called directly with its searched plan, dense fp8 row-wise, fp8 + 2:4 (cuSPARSELt;
   torchao where installed). Host cost per call against kernel time (CUDA graph replay) for each.
2. End to end on the demo architecture and on 8B-shaped blocks (random weights, 2:4 by magnitude): prefill
   at 512/2048/8192 tokens, decode at batch 1/16/64 eager and from a CUDA graph, for dense bf16, 2:4 bf16,
   fp8, fp8+2:4 (and torchao's), with peak memory and $ per million tokens at --gpu-price.
3. The targets: 2:4 bf16 ≥ 1.3× dense bf16 and fp8+2:4 ≥ 1.2× dense fp8 on 14336×4096 and 4096×14336 at
   ≥ 2048 tokens, printed PASS / MISS / NOT RUN.

Writes one JSON object per row to --out (kind: meta | kernel | serving | target) and a Markdown table beside
it (.md). `--dry-run` runs the same code on the CPU with tiny shapes: every GPU case is a `skipped` row
with its reason, dense decode runs in fp32 (eager; graphs skipped).

    python benchmarks/hopper_24.py --gpu-price 3.5            # on the GPU machine
    python benchmarks/hopper_24.py --dry-run --out /tmp/h.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig  # noqa: E402

from core.events import Job  # noqa: E402
from core.kernels import hopper  # noqa: E402
from core.kernels import sparse_rules as rules  # noqa: E402
from core.kernels.benchmark import BenchOptions, run_benchmark  # noqa: E402
from core.kernels.cases import two_four  # noqa: E402
from core.kernels.direct_cases import direct_cases  # noqa: E402
from core.kernels.end_to_end import device_copy  # noqa: E402
from core.kernels.results import DENSE, KernelMeasured, KernelResult  # noqa: E402
from core.kernels.serving import ServingOptions, serving_matrix  # noqa: E402
from core.models.architectures import find_layout  # noqa: E402
from core.models.loaded import LoadedModel  # noqa: E402

# Llama-3-8B's block shapes (hidden 4096, MLP 14336, 32 heads, 8 KV heads) with few blocks: speed per
# layer depends on the shapes only, and a few blocks keep the run inside the time. The embedding is tied
# to the head (one 128256×4096 matrix, not two: less to build on the host; the head's matmul is the same).
LLAMA8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, vocab_size=128256, max_position_embeddings=16384, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
            max_position_embeddings=256, tie_word_embeddings=True)


def random_model(config, name: str) -> LoadedModel:
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    layout = find_layout(net)
    with torch.no_grad():
        for block in range(len(layout.blocks)):
            for layer in layout.linears(block).values():
                layer.weight.normal_(0, 0.02)
                layer.weight.copy_(two_four(layer.weight))       # every variant times the same 2:4 weights
    return LoadedModel(net, None, name, "folder", None, layout)


def models(dry_run: bool, blocks: int) -> list[LoadedModel]:
    if dry_run:
        return [lambda: random_model(LlamaConfig(num_hidden_layers=2, **TINY), "tiny (dry run)")]
    demo = AutoConfig.from_pretrained(HERE / "demo-config.json")       # the targets' shapes come first
    return [lambda: random_model(LlamaConfig(num_hidden_layers=blocks, **LLAMA8B), f"Llama-8B shapes, {blocks} blocks"),
            lambda: random_model(demo, "demo architecture")]


def log(started: float, text: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f}s] {text}", file=sys.stderr, flush=True)


def kernel_rows(loaded, args, device, started, out) -> list[KernelResult]:
    if device.type == "cuda":
        tokens = (16, 2048) if loaded.name.startswith("demo") else (16, 2048, 8192)
        options = BenchOptions(tokens=tokens, dtype="bf16", int8=False, device="cuda", end_to_end=False,
                               budget_s=args.case_budget, gpu_price=args.gpu_price)

        def on_event(event):
            if isinstance(event, KernelMeasured):
                r = event.result
                log(started, f"{r.shape[0]}x{r.shape[1]} t={r.tokens} {r.dtype} {r.backend}: {r.status} "
                    f"{r.median_ms if r.status == 'ok' else r.reason}")
                out(kind="kernel", model=loaded.name, **asdict(r))
        return run_benchmark(loaded, options, Job(on_event)).kernels
    # Dry run on the CPU: the GPU paths' refusals, one shape and token count at a time, as on a GPU.
    rows = []
    options = BenchOptions(tokens=(16, 64), device="cpu", budget_s=0.01, max_samples=3)
    layer = loaded.layout.linears(0)["mlp.up_proj"]
    shape = tuple(layer.weight.shape)
    for tokens in options.tokens:
        rows.append(KernelResult(shape, 1, tokens, "bf16", DENSE, "cpu", "skipped", "dry run: no CUDA device",
                                 gpu="CPU", torch_version=torch.__version__))
        for measure in direct_cases(shape, 1, layer.weight, tokens, torch.bfloat16, rules.device_capability(),
                                    options, device, "CPU"):
            rows.append(measure())
    for r in rows:
        out(kind="kernel", model=loaded.name, **asdict(r))
    return rows


def serving_rows(loaded, args, device, started, out) -> list:
    dry = device.type != "cuda"
    options = ServingOptions(prefill=(16, 32) if dry else (512, 2048, 8192), batches=(1, 2) if dry else (1, 16, 64),
                             context=8 if dry else 128, steps=4 if dry else args.steps, repeats=2 if dry else 3,
                             gpu_price=args.gpu_price)
    model = device_copy(loaded.model, device, torch.bfloat16 if not dry else torch.float32)
    names = [info.full_name for block in loaded.layout.inventory for info in block.linears]
    capability = rules.device_capability(device) if not dry else None
    gpu = torch.cuda.get_device_name(device) if not dry else "CPU"
    rows = []
    for row in serving_matrix(model, names, options, device, capability, loaded.name, gpu, Job()):
        log(started, f"{row.model} {row.variant} {row.phase} t={row.prompt_tokens} b={row.batch} "
            f"graphed={row.graphed}: {row.status} {row.reason} ttft={row.ttft_ms} itl={row.itl_ms}")
        out(kind="serving", **asdict(row))
        rows.append(row)
    del model
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: GPU cases skipped with reasons")
    parser.add_argument("--out", help="JSONL file (default benchmarks/results/hopper_24.jsonl; "
                                      "hopper_24.dry-run.jsonl with --dry-run)")
    parser.add_argument("--gpu-price", type=float, default=0.0, help="$ per GPU-hour, for $ per million tokens")
    parser.add_argument("--blocks", type=int, default=4, help="blocks of the 8B-shaped model end to end")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per batch size")
    parser.add_argument("--case-budget", type=float, default=0.2, help="seconds of samples per kernel case")
    parser.add_argument("--budget-s", type=float, default=420,
                        help="after this many seconds no further model is started (the first always runs)")
    args = parser.parse_args(argv)
    default = "hopper_24.dry-run.jsonl" if args.dry_run else "hopper_24.jsonl"
    path = Path(args.out) if args.out else HERE / "results" / default
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    kernels, serving = [], []
    with tmp.open("w") as sink:
        def out(**row):
            sink.write(json.dumps(row, default=str) + "\n")
            sink.flush()

        out(kind="meta", dry_run=args.dry_run, torch=torch.__version__, device=str(device),
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            gpu_price=args.gpu_price, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        for build in models(args.dry_run, args.blocks):
            if time.perf_counter() - started > args.budget_s:
                out(kind="meta", skipped=f"a model left out: past the --budget-s of {args.budget_s:.0f} s")
                log(started, "time budget spent: the remaining model is left out")
                break
            loaded = build()
            log(started, f"kernels: {loaded.name}")
            kernels += kernel_rows(loaded, args, device, started, out)
            log(started, f"end to end: {loaded.name}")
            serving += serving_rows(loaded, args, device, started, out)
            del loaded
            if device.type == "cuda":
                torch.cuda.empty_cache()
        shapes = hopper.TARGET_SHAPES if not args.dry_run else tuple({tuple(r.shape) for r in kernels})
        verdicts = hopper.judge(kernels, shapes=shapes, min_tokens=hopper.TARGET_TOKENS if not args.dry_run else 1)
        for v in verdicts:
            out(kind="target", **asdict(v))
        out(kind="meta", seconds=round(time.perf_counter() - started, 1))
    tmp.replace(path)
    title = f"# 2:4 on Hopper ({'DRY RUN on the CPU: nothing ran on a GPU' if args.dry_run else 'GPU run'})\n\n"
    markdown = (title + "## Targets\n\n" + hopper.verdict_table(verdicts) + "\n## Kernels\n\n"
                + hopper.kernel_table(kernels) + "\n## End to end\n\n" + hopper.serving_table(serving))
    path.with_suffix(".md").write_text(markdown)
    for v in verdicts:
        speed = "" if v.speedup is None else f" {v.speedup:.2f}x"
        print(f"{v.verdict}: {v.target}, {v.shape[0]}x{v.shape[1]} at {v.tokens} tokens{speed} ({v.detail})")
    log(started, f"done; rows in {path}, table in {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
