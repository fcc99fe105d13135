"""End to end: greedy decoding with the KV cache on a copy of the model, dense against each sparse variant
(2:4 on the GPU, CSR on the CPU): time to first token, inter-token latency, tokens/s, peak memory."""

from __future__ import annotations

import copy
import inspect
import statistics
import time

import torch
from torch import nn

from ..compute import DTYPES
from ..models.architectures import weight_matrix
from ..patterns import TWO_FOUR, follows_pattern
from ..pruning.masks import nm_mask
from . import sparse_rules as rules
from .cases import first_line, sparse_bytes, sparse_class, to_csr
from .results import CSR, DENSE, EndToEndResult


def device_copy(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """A copy of `model` on `device` (floating parameters in `dtype`) that leaves the original untouched.

    Parameters are copied straight to the device through deepcopy's memo, so the host never holds two
    copies; tied parameters stay tied because they are one object.
    """
    memo = {}
    for p in model.parameters():
        value = p.detach().to(device, dtype if dtype is not None and p.is_floating_point() else p.dtype, copy=True)
        memo[id(p)] = nn.Parameter(value, requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b.detach().to(device, copy=True)
    return copy.deepcopy(model, memo)


class CsrLinear(nn.Module):
    """A linear layer whose weight is a CSR tensor: y = (W_csr @ xᵀ)ᵀ + b (faster than F.linear with CSR)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight_csr = to_csr(weight)
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def end_to_end(loaded, options, device, capability, backends, notes, job):
    """Dense (the 2:4 weights stored densely) against each sparse variant, on a copy of the model."""
    dtype = DTYPES[options.dtype] if device.type == "cuda" else torch.float32
    name = rules.dtype_name(dtype)
    model = device_copy(loaded.model, device, dtype)
    linears = _prunable_linears(loaded, model)
    if _apply_two_four(linears):
        notes.append("end to end: the model was not 2:4, so a 2:4 magnitude mask was applied to a copy for timing")
    gen = torch.Generator().manual_seed(options.seed)
    vocab = int(getattr(model.config, "vocab_size", 32000))
    prompt = torch.randint(3, vocab, (1, options.prompt_tokens), generator=gen).to(device)
    variants = [DENSE] + ([CSR] if device.type != "cuda" else [b for b, why in backends.items() if not why])
    try:
        for variant in variants:
            job.check()
            base = EndToEndResult(variant, str(device), name, "skipped", prompt_tokens=options.prompt_tokens,
                                  new_tokens=options.new_tokens, total_layers=len(linears))
            yield _run_variant(model, linears, variant, prompt, options, device, dtype, capability, base)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _prunable_linears(loaded, model) -> dict[str, nn.Module]:
    names = [info.full_name for block in loaded.layout.inventory for info in block.linears]
    return {name: model.get_submodule(name) for name in names}


@torch.no_grad()
def _apply_two_four(linears: dict[str, nn.Module]) -> bool:
    changed = False
    for layer in linears.values():
        w = weight_matrix(layer)
        if not follows_pattern(w, TWO_FOUR):
            w.masked_fill_(nm_mask(w.float().abs(), TWO_FOUR), 0)
            changed = True
    return changed


def _run_variant(model, linears, variant, prompt, options, device, dtype, capability, base: EndToEndResult):
    swapped = {}
    try:
        if variant != DENSE:
            swapped = _swap_in(model, linears, variant, dtype, capability, device)
            if not swapped:
                base.reason = f"no layer could be converted for {variant}"
                return base
        base.converted_layers = len(swapped)
        base.weight_bytes = sum(_layer_bytes(model.get_submodule(n)) for n in linears)
        # Warm-up over the same lengths as the measured run: on a GPU, each new KV-cache length can pick
        # (and lazily load) new kernels, and a short warm-up left the first variant measured 3-20x slow.
        _generate(model, prompt, options.new_tokens, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        ttft, steps = _generate(model, prompt, options.new_tokens, device)
        base.ttft_ms, base.itl_ms = ttft * 1000, statistics.median(steps) * 1000
        base.tokens_per_s = options.new_tokens / (ttft + sum(steps))
        base.peak_bytes = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        base.status = "ok"
    except Exception as exc:
        base.status, base.reason = "failed", first_line(exc)
    finally:
        _swap_out(model, swapped)
    return base


def _layer_bytes(layer: nn.Module) -> int:
    if isinstance(layer, CsrLinear):
        w = layer.weight_csr
        return sum(t.numel() * t.element_size() for t in (w.crow_indices(), w.col_indices(), w.values()))
    w = layer.weight
    return sparse_bytes(w) if getattr(w, "packed", None) is not None else w.numel() * w.element_size()


def _swap_in(model, linears, variant, dtype, capability, device) -> dict:
    """Replace each eligible layer's weight (CUDA) or the layer itself (CPU CSR); return what to put back.

    The dense originals wait on the CPU so that the peak memory measured is the sparse model's own.
    """
    swapped = {}
    for name, layer in linears.items():
        if variant == CSR:
            parent, attr = _parent(model, name)
            setattr(parent, attr, CsrLinear(weight_matrix(layer).detach(), getattr(layer, "bias", None)))
            swapped[name] = layer
            continue
        if type(layer) is not nn.Linear:
            continue
        ok, reason = rules.check(tuple(layer.weight.shape), dtype, variant, capability)
        if not ok or reason:            # padding a layer inside the model is not done: it stays dense
            continue
        dense = layer.weight
        layer.weight = nn.Parameter(sparse_class(variant).from_dense(dense.detach().contiguous()), requires_grad=False)
        swapped[name] = dense.detach().to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return swapped


def _swap_out(model, swapped: dict) -> None:
    for name, original in swapped.items():
        if isinstance(original, nn.Module):
            parent, attr = _parent(model, name)
            setattr(parent, attr, original)
        else:
            layer = model.get_submodule(name)
            device = layer.weight.device
            layer.weight = nn.Parameter(original.to(device), requires_grad=False)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


@torch.no_grad()
def _generate(model, prompt: torch.Tensor, new_tokens: int, device) -> tuple[float, list[float]]:
    """Greedy decoding with the KV cache: (seconds to the first new token, seconds of each further token)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    tic = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    sync()
    ttft = time.perf_counter() - tic
    keyword = _cache_keyword(model)       # transformers 5.x renamed past_key_values to cache
    cache, steps = _cache_of(out), []
    for _ in range(new_tokens - 1):
        tic = time.perf_counter()
        out = model(input_ids=token, use_cache=True, **{keyword: cache})
        cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
        sync()
        steps.append(time.perf_counter() - tic)
    return ttft, steps


def _cache_keyword(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output):
    for key in ("cache", "past_key_values"):
        if output.get(key) is not None:
            return output[key]
    raise RuntimeError("the model returned no KV cache; end-to-end decoding needs use_cache support")
