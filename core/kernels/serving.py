"""End to end as a deployment sees it (issue 14 §2): prefill at several prompt lengths (time to first
token) and decode at several batch sizes (inter-token latency, tokens/s), for dense bf16, 2:4 bf16
(cuSPARSELt directly), fp8 (row-wise, `torch._scaled_mm`), fp8 + 2:4 (cuSPARSELt, row-wise weight scales;
torchao's config where installed), decode eager and from a CUDA graph, with peak memory and the cost
per million tokens at the user's $/GPU-hour.

Every variant runs on the same model copy, whose prunable linears hold 2:4 weights: the dense rows
are the same weights stored densely. A variant swaps those layers for its own modules and puts the
originals back afterwards. Each variant's first decode logits are compared with dense bf16's
(`rel_error`, `checked` within `tolerance`), and graphed decode with eager decode of the same variant.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import cusparselt as cslt
from .cases import first_line
from .decode_graph import DecodeStep
from .results import EndToEndResult, cost_per_million

DENSE_BF16, SPARSE_BF16, FP8_ROWWISE, FP8_SPARSE, FP8_SPARSE_TORCHAO = (
    "dense bf16", "2:4 bf16", "fp8", "fp8+2:4", "fp8+2:4 torchao")
VARIANTS = (DENSE_BF16, SPARSE_BF16, FP8_ROWWISE, FP8_SPARSE, FP8_SPARSE_TORCHAO)
# First-step logits against dense bf16's on the same (2:4) weights: bf16 kernels differ in rounding
# only; fp8 quantizes activations and weights, which moves logits by several percent.
TOLERANCE = {DENSE_BF16: 1e-2, SPARSE_BF16: 5e-2, FP8_ROWWISE: 0.25, FP8_SPARSE: 0.25, FP8_SPARSE_TORCHAO: 0.25}
GRAPH_TOLERANCE = 1e-2      # graphed against eager decode of the same variant


@dataclass
class ServingOptions:
    prefill: tuple[int, ...] = (512, 2048, 8192)
    batches: tuple[int, ...] = (1, 16, 64)
    context: int = 128             # tokens already in the cache when decode is timed
    steps: int = 16                # decode steps timed per batch size
    repeats: int = 3               # prefill: timed runs (median)
    graphed: bool = True
    gpu_price: float = 0.0         # $ per GPU-hour
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0


def refusal(variant: str, device: torch.device, capability) -> str:
    """"" when `variant` can run here, else why not."""
    if variant == DENSE_BF16:
        return ""
    if device.type != "cuda":
        return f"{variant} needs a CUDA GPU (the 2:4 and fp8 kernels have no CPU version)"
    if variant == SPARSE_BF16:
        return cslt.direct_support()
    if variant == FP8_ROWWISE:
        return cslt.fp8_support(capability)
    if variant == FP8_SPARSE:
        return cslt.fp8_support(capability) or cslt.direct_support()
    if variant == FP8_SPARSE_TORCHAO:
        return cslt.torchao_support(capability) or cslt.fp8_support(capability)
    return f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}"


def swap_in(model: nn.Module, names: list[str], variant: str) -> dict:
    """Replace the named nn.Linear layers by `variant`'s modules; returns name -> (original, its device).

    The originals wait on the CPU, so that the peak memory measured is the variant's own."""
    originals = {name: model.get_submodule(name) for name in names}
    if variant == DENSE_BF16:
        return {}
    kept = {}
    try:
        if variant == FP8_SPARSE_TORCHAO:
            kept = {name: (_copy_linear(layer).to("cpu"), layer.weight.device) for name, layer in originals.items()}
            cslt.torchao_fp8_24(model, names)
            return kept
        make = {SPARSE_BF16: lambda l: cslt.CsltLinear(l.weight, l.bias),
                FP8_ROWWISE: lambda l: cslt.Fp8Linear(l.weight, l.bias),
                FP8_SPARSE: lambda l: cslt.CsltLinear(l.weight, l.bias, fp8=True)}[variant]
        for name, layer in originals.items():
            _set(model, name, make(layer))
            kept[name] = (layer, layer.weight.device)
            layer.to("cpu")
    except Exception:
        swap_out(model, kept)          # a conversion that fails halfway leaves the model as it was
        raise
    return kept


def swap_out(model: nn.Module, originals: dict) -> None:
    for name, (layer, device) in originals.items():
        _set(model, name, layer.to(device))


def _copy_linear(layer: nn.Linear) -> nn.Linear:
    copy = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                     device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        copy.weight.copy_(layer.weight)
        if layer.bias is not None:
            copy.bias.copy_(layer.bias)
    return copy


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def serving_matrix(model, names: list[str], options: ServingOptions, device: torch.device, capability,
                   label: str, gpu: str, job):
    """Yield an `EndToEndResult` per variant × (prefill length | decode batch × eager/graphed)."""
    vocab = int(getattr(model.config, "vocab_size", 32000))
    gen = torch.Generator().manual_seed(options.seed)
    reference: dict = {}                       # batch -> dense bf16's first decode logits
    dtype = next(model.parameters()).dtype
    for variant in options.variants:
        why = refusal(variant, device, capability)
        rows = _rows(variant, options, device, dtype, label, gpu, len(names))
        if why:
            for row in rows:
                row.reason = why
                yield row
            continue
        job.check()
        try:
            originals = swap_in(model, names, variant)
        except Exception as exc:
            for row in rows:
                row.status, row.reason = "failed", f"conversion: {first_line(exc)}"
                yield row
            continue
        try:
            eager_logits: dict = {}
            for row in rows:
                job.check()
                job.phase("serving", 0, 0, f"{label}: {variant} {row.phase} "
                          f"{row.prompt_tokens if row.phase == 'prefill' else row.batch}")
                if row.graphed and device.type != "cuda":
                    row.reason = "CUDA graphs need a CUDA device"
                elif row.phase == "prefill":
                    _prefill(model, row, options, device, vocab, gen)
                else:
                    _decode(model, row, options, device, vocab, reference, eager_logits, variant)
                row.cost_per_million = cost_per_million(row.tokens_per_s, options.gpu_price)
                yield row
        finally:
            swap_out(model, originals)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _rows(variant, options, device, dtype, label, gpu, layers) -> list[EndToEndResult]:
    name = "fp8" if variant.startswith("fp8") else ("bf16" if dtype == torch.bfloat16 else str(dtype)[6:])
    common = dict(device=str(device), dtype=name, status="skipped", gpu=gpu, torch_version=torch.__version__,
                  model=label, total_layers=layers, converted_layers=0 if variant == DENSE_BF16 else layers)
    rows = [EndToEndResult(variant, prompt_tokens=t, new_tokens=1, phase="prefill", **common) for t in options.prefill]
    for batch in options.batches:
        for graphed in (False, True) if options.graphed else (False,):
            rows.append(EndToEndResult(variant, prompt_tokens=options.context, new_tokens=options.steps,
                                       phase="decode", batch=batch, graphed=graphed, **common))
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device):
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


@torch.no_grad()
def _prefill(model, row: EndToEndResult, options, device, vocab, gen) -> None:
    try:
        prompt = torch.randint(3, vocab, (1, row.prompt_tokens), generator=gen).to(device)
        step = DecodeStep(model, row.prompt_tokens + 1)
        step.prefill(prompt)                       # warm-up: kernels for this length load here
        _reset_peak(device)
        times = []
        for _ in range(options.repeats):
            _sync(device)
            tic = time.perf_counter()
            step.prefill(prompt).argmax(-1)
            _sync(device)
            times.append(time.perf_counter() - tic)
        row.ttft_ms = statistics.median(times) * 1000
        row.tokens_per_s = row.prompt_tokens / statistics.median(times)
        row.peak_bytes, row.status = _peak(device), "ok"
    except Exception as exc:
        row.status, row.reason = "failed", first_line(exc)


@torch.no_grad()
def _decode(model, row: EndToEndResult, options, device, vocab, reference, eager_logits, variant) -> None:
    try:
        gen = torch.Generator().manual_seed(options.seed + row.batch)
        prompt = torch.randint(3, vocab, (row.batch, options.context), generator=gen).to(device)
        step = DecodeStep(model, options.context + options.steps + 1, graphed=row.graphed)
        token = step.prefill(prompt).argmax(-1, keepdim=True)
        first = step.step(token).float().clone()  # warm-up (and, graphed, the capture) at the first position
        _reset_peak(device)
        times, logits = [], first
        for _ in range(options.steps - 1):
            token = logits.argmax(-1, keepdim=True)
            _sync(device)
            tic = time.perf_counter()
            logits = step.step(token)
            _sync(device)
            times.append(time.perf_counter() - tic)
        row.itl_ms = statistics.median(times) * 1000
        row.tokens_per_s = row.batch / statistics.median(times)
        row.peak_bytes, row.status = _peak(device), "ok"
        if not row.graphed:
            eager_logits[row.batch] = first
            if variant == DENSE_BF16:
                reference[row.batch] = first
            base, row.tolerance = reference.get(row.batch), TOLERANCE[variant]
        else:
            base, row.tolerance = eager_logits.get(row.batch), GRAPH_TOLERANCE
        if base is not None:
            row.rel_error = float((first - base).norm() / base.norm().clamp(min=1e-30))
            row.checked = row.rel_error <= row.tolerance
    except Exception as exc:
        row.status, row.reason = "failed", first_line(exc)
