"""The kernel cases for one weight shape and token count: dense against each 2:4 backend on the GPU, or
dense, masked dense and CSR on the CPU; each checked against the float64 product of the same weight."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..patterns import TWO_FOUR, follows_pattern
from ..pruning.masks import nm_mask
from . import sparse_rules as rules
from .results import CPU_NOTE, CSR, DENSE, INT8_DENSE, MASKED, KernelResult
from .timing import median_and_spread, rel_error, rotation_count, time_cpu, time_cuda


def distinct_shapes(loaded) -> dict[tuple[int, int], tuple[int, nn.Module]]:
    """shape [out, in] -> (how many linear layers have it, the first such layer)."""
    shapes: dict = {}
    for block in loaded.layout.inventory:
        for info in block.linears:
            count, layer = shapes.get(info.shape, (0, None))
            if layer is None:
                layer = loaded.layout.blocks[block.index].get_submodule(info.name)
            shapes[info.shape] = (count + 1, layer)
    return shapes


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """The weight itself when it already follows 2:4, else its 2:4 magnitude pruning (for timing only)."""
    weight = weight.detach().float()
    if follows_pattern(weight, TWO_FOUR):
        return weight.clone()
    return weight.masked_fill(nm_mask(weight.abs(), TWO_FOUR), 0)


def _measure(fn, inputs, reference, device, options, base: KernelResult) -> KernelResult:
    """Time `fn` over rotated `inputs`, check its first output against `reference`, fill `base`."""
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        error = rel_error(fn(inputs[0]), reference)
        samples = time_cuda(fn, inputs, options) if device.type == "cuda" else time_cpu(fn, inputs, options)
        base.median_ms, base.spread_ms = median_and_spread(samples)
        base.samples, base.rel_error, base.status = len(samples), error, "ok"
        if device.type == "cuda":
            base.peak_bytes = int(torch.cuda.max_memory_allocated(device))
    except Exception as exc:  # a kernel that refuses a case at run time: recorded, never fatal
        base.status, base.reason = "failed", first_line(exc)
    return base


def cpu_cases(shape, count, weight, tokens, options, device):
    """dense (the layer's weight), masked dense (2:4 zeros stored densely), CSR (torch.sparse.mm)."""
    dense = weight.detach().float().contiguous()
    masked = two_four(dense)
    csr = to_csr(masked)
    gen = torch.Generator().manual_seed(options.seed + tokens)
    inputs = [torch.randn(tokens, shape[1], generator=gen) for _ in range(2)]
    refs = {DENSE: F.linear(inputs[0].double(), dense.double()), MASKED: F.linear(inputs[0].double(), masked.double())}
    csr_bytes = sum(t.numel() * t.element_size() for t in (csr.crow_indices(), csr.col_indices(), csr.values()))
    cases = [
        (DENSE, lambda x: F.linear(x, dense), refs[DENSE], dense.numel() * 4),
        (MASKED, lambda x: F.linear(x, masked), refs[MASKED], masked.numel() * 4),
        (CSR, lambda x: torch.sparse.mm(csr, x.t()).t(), refs[MASKED], csr_bytes),
    ]
    for backend, fn, ref, nbytes in cases:
        base = KernelResult(shape, count, tokens, "fp32", backend, str(device), "skipped",
                            weight_bytes=nbytes, expected_gain=False if backend != DENSE else None,
                            expectation=CPU_NOTE if backend != DENSE else "")
        yield lambda b=base, f=fn, r=ref: _measure(f, inputs, r, device, options, b)


def _padded_linear(weight_sparse, out_features: int, in_pad: int):
    if not in_pad:
        return lambda x: F.linear(x, weight_sparse)[:, :out_features] if weight_sparse.shape[0] != out_features \
            else F.linear(x, weight_sparse)
    return lambda x: F.linear(F.pad(x, (0, in_pad)), weight_sparse)[:, :out_features]


def sparse_class(backend: str):
    return {rules.CUTLASS: torch.sparse.SparseSemiStructuredTensorCUTLASS,
            rules.CUSPARSELT: torch.sparse.SparseSemiStructuredTensorCUSPARSELT}[backend]


def sparse_bytes(tensor) -> int:
    return sum(t.numel() * t.element_size() for t in (getattr(tensor, a, None) for a in ("packed", "meta"))
               if t is not None)


def cuda_cases(shape, count, weight, tokens, dtype, backends, capability, options, device):
    """Dense F.linear and each 2:4 backend (`backends`: name -> why it cannot run, or "") on copies of one masked weight."""
    masked = two_four(weight)
    gen = torch.Generator().manual_seed(options.seed + tokens)
    is_int8 = dtype == torch.int8
    if is_int8:   # small integers: the products stay exact and inside int8's range
        base_w = (masked.sign()).to(torch.int8)
        make_x = lambda i: torch.randint(-1, 2, (tokens, shape[1]), generator=gen, dtype=torch.int8)
    else:
        base_w = masked.to(dtype)
        make_x = lambda i: torch.randn(tokens, shape[1], generator=gen).to(dtype)
    elsize = base_w.element_size()
    sets = rotation_count((shape[0] * shape[1] + tokens * shape[1]) * elsize, device, options)
    inputs = [make_x(i).to(device) for i in range(sets)]
    weights = [base_w.to(device) for _ in range(sets)]
    reference = inputs[0].double() @ weights[0].double().t()
    name = rules.dtype_name(dtype)
    dense_name = INT8_DENSE if is_int8 else DENSE

    if is_int8:
        dense_fn = _rotating([lambda x, w=w: torch._int_mm(x, w.t()) for w in weights])
    else:
        dense_fn = _rotating([lambda x, w=w: F.linear(x, w) for w in weights])
    base = KernelResult(shape, count, tokens, name, dense_name, str(device), "skipped",
                        weight_bytes=shape[0] * shape[1] * elsize)
    if is_int8 and (tokens <= 16 or shape[0] % 8 or shape[1] % 8):
        base.reason = "torch._int_mm (dense int8) needs more than 16 tokens and dimensions that are multiples of 8"
        yield lambda b=base: b
    else:
        yield lambda b=base: _measure(dense_fn, inputs, reference, device, options, b)
    for backend, unavailable in backends.items():
        ok, reason = (False, unavailable) if unavailable else rules.check(shape, dtype, backend, capability)
        gain, expectation = rules.expected_gain(shape, tokens, dtype, backend)
        base = KernelResult(shape, count, tokens, name, backend, str(device), "skipped", reason,
                            expected_gain=gain, expectation=expectation)
        if not ok:
            yield lambda b=base: b
            continue
        yield lambda b=base, be=backend: _sparse_case(b, be, weights, inputs, reference, dtype, device, options)


def _sparse_case(base, backend, weights, inputs, reference, dtype, device, options):
    shape = base.shape
    target = rules.padded_shape(shape, dtype, backend)
    try:
        padded = [F.pad(w, (0, target[1] - shape[1], 0, target[0] - shape[0])).contiguous() for w in weights]
        sparse = [sparse_class(backend).from_dense(w) for w in padded]
        del padded
    except Exception as exc:
        base.status, base.reason = "failed", f"conversion: {first_line(exc)}"
        return base
    base.weight_bytes = sparse_bytes(sparse[0])
    fns = [_padded_linear(s, shape[0], target[1] - shape[1]) for s in sparse]
    return _measure(_rotating(fns), inputs, reference, device, options, base)


def _rotating(fns: list):
    """One callable that uses the next weight copy on every call (all copies hold the same values)."""
    state = {"i": 0}

    def fn(x):
        state["i"] = (state["i"] + 1) % len(fns)
        return fns[state["i"]](x)
    return fn


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # "Sparse CSR tensor support is in beta state"
        return weight.detach().to_sparse_csr()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
