"""The GPU benchmark on the demo model, as one script: kernels per linear shape and token count, then end to end.

Runs where `compression-studio bench demo` cannot: on a machine with no network and no converted
demo model, the demo's architecture is built from `benchmarks/demo-config.json` with random weights
pruned 2:4 by magnitude. Speed does not depend on the values (they are random, never zeros), only on
the shapes and the 2:4 pattern. Writes JSON, CSV and a Markdown table per dtype into --out, and prints
progress on stderr as each measurement lands.

    python benchmarks/gpu_bench.py --out benchmarks/results [--dtypes fp16,bf16] [--tokens 1,16,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from core.kernels import benchmark as bench  # noqa: E402
from core.kernels import results  # noqa: E402
from core.models.architectures import find_layout  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.events import Job, Message, Phase  # noqa: E402
from core.models.loaded import LoadedModel  # noqa: E402
from core.models.open import open_model  # noqa: E402


def load(model: str, config_file: Path) -> LoadedModel:
    """The demo model when it is here (or downloadable); else its architecture with random weights."""
    if model != "config":
        try:
            return open_model(model)
        except UserError as exc:
            print(f"[gpu_bench] {model} not available ({exc}); using {config_file.name} with random weights",
                  file=sys.stderr)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_file.parent if config_file.name == "config.json" else config_file)
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    layout = find_layout(net)
    with torch.no_grad():
        for block in range(len(layout.blocks)):
            for layer in layout.linears(block).values():
                layer.weight.normal_(0, 0.02)       # initializers may leave some weights at zero
    return LoadedModel(net, None, f"{config_file.stem} (random weights)", "folder", None, layout)


def printer(started: float):
    def on_event(event):
        now = time.perf_counter() - started
        if isinstance(event, results.KernelMeasured):
            r = event.result
            speedup = "" if r.speedup is None else f" x{r.speedup:.2f}"      # None: its dense case could not run
            timing = f"{r.median_ms:.4f} ms{speedup} err {r.rel_error:.1e}" if r.status == "ok" else r.reason
            print(f"[{now:6.1f}s] {r.shape[0]}x{r.shape[1]} t={r.tokens:<5} {r.dtype:<4} {r.backend:<11} {r.status:<7} "
                  f"{timing}", file=sys.stderr, flush=True)
        elif isinstance(event, results.EndToEndMeasured):
            r = event.result
            print(f"[{now:6.1f}s] end to end {r.variant} {r.dtype}: {r.status} {r.reason} ttft={r.ttft_ms} "
                  f"itl={r.itl_ms} tok/s={r.tokens_per_s}", file=sys.stderr, flush=True)
        elif isinstance(event, Message):
            print(f"[{now:6.1f}s] {event.text}", file=sys.stderr, flush=True)
        elif isinstance(event, Phase) and event.name == "benchmark" and event.done == 0:
            print(f"[{now:6.1f}s] {event.total} measurements to make", file=sys.stderr, flush=True)
    return on_event


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="'demo', a model folder, or 'config' for random weights")
    parser.add_argument("--config", default=str(HERE / "demo-config.json"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--tokens", default="1,16,128,512,2048,8192")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds of samples per case at most")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    loaded = load(args.model, Path(args.config))
    tokens = tuple(int(t) for t in args.tokens.split(","))
    for i, dtype in enumerate(args.dtypes.split(",")):
        options = bench.BenchOptions(tokens=tokens, dtype=dtype, int8=(i == 0), device=args.device,
                                     budget_s=args.budget, prompt_tokens=args.prompt_tokens,
                                     new_tokens=args.new_tokens)
        report = bench.run_benchmark(loaded, options, Job(printer(started)))
        stem = out / ("bench-cpu" if report.device == "cpu" else f"bench-cuda-{dtype}")
        stem.with_suffix(".json").write_text(report.to_json())
        stem.with_suffix(".csv").write_text(report.to_csv())
        stem.with_suffix(".md").write_text(report.to_markdown())
        print(report.to_markdown(), flush=True)
        if report.device == "cpu":
            break               # the CPU runs in fp32 whatever the dtype: once is enough
    print(f"[gpu_bench] done in {time.perf_counter() - started:.0f} s; results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
