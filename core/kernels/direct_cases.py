"""Kernel cases for issue 14's paths on one weight shape and token count (CUDA only): cuSPARSELt called
directly with its searched plan, dense fp8 with row-wise scales, fp8 + 2:4 through cuSPARSELt
(row-wise weight scales, one activation scale) and through torchao's fp8 2:4 config.

Each row says which limits it: `host_ms` (wall clock per call, launches without a sync) against
`kernel_ms` (the GPU's time alone, from a CUDA graph replay); `median_ms` is the eager time between CUDA
events, the one compared with dense. fp8 rows take bf16 activations and quantize them on every call,
as a model would, and are checked against the float64 product of the dequantized operands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cusparselt as cslt
from . import sparse_rules as rules
from .cases import first_line, two_four
from .results import CSLT_DIRECT, FP8_CSLT, FP8_DENSE, FP8_TORCHAO, KernelResult
from .timing import graph_kernel_ms, host_ms, median_and_spread, rel_error, rotation_count, time_cuda

FP8_NAME = "fp8"
# torchao quantizes internally, so its row is checked against the unquantized product: fp8 rounding of
# both operands (3 mantissa bits) gives a few percent.
TORCHAO_TOLERANCE = 8e-2
FP8_NOTE = "fp8 rows include quantizing the activations on every call"


def direct_backends(options) -> list[str]:
    return [CSLT_DIRECT] + ([FP8_DENSE, FP8_CSLT, FP8_TORCHAO] if getattr(options, "fp8", True) else [])


def direct_cases(shape, count, weight, tokens, dtype, capability, options, device, gpu: str):
    """One lazily measured case per `direct_backends(options)`, skipped with its reason where refused."""
    masked = two_four(weight)
    gen = torch.Generator().manual_seed(options.seed + tokens)
    sets = rotation_count((shape[0] * shape[1] + tokens * shape[1]) * 2, device, options)
    inputs = [torch.randn(tokens, shape[1], generator=gen).to(device, torch.bfloat16 if dtype == FP8_NAME else dtype)
              for _ in range(sets)]
    common = dict(gpu=gpu, torch_version=torch.__version__)

    def row(backend, name, reason=""):
        gain, expectation = rules.expected_gain(shape, tokens, torch.float16, rules.CUSPARSELT)
        if backend == FP8_DENSE:
            gain, expectation = None, FP8_NOTE
        return KernelResult(shape, count, tokens, name, backend, str(device), "skipped", reason,
                            expected_gain=gain, expectation=expectation, **common)

    half = row(CSLT_DIRECT, rules.dtype_name(dtype), _direct_refusal(shape, dtype, capability))
    yield lambda b=half: b if b.reason else _direct_half(b, masked, inputs, dtype, device, options)
    if not getattr(options, "fp8", True):
        return
    fp8_why = cslt.fp8_support(capability) or _fp8_shape_refusal(shape)
    dense = row(FP8_DENSE, FP8_NAME, fp8_why)
    yield lambda b=dense: b if b.reason else _fp8_dense(b, masked, inputs, device, options)
    sparse = row(FP8_CSLT, FP8_NAME, fp8_why or cslt.direct_support())
    yield lambda b=sparse: b if b.reason else _fp8_cslt(b, masked, inputs, device, options)
    tao = row(FP8_TORCHAO, FP8_NAME, cslt.torchao_support(capability) or fp8_why)
    yield lambda b=tao: b if b.reason else _torchao(b, masked, inputs, device, options)


def _direct_refusal(shape, dtype, capability) -> str:
    why = cslt.direct_support()
    if why:
        return why
    ok, reason = rules.check(shape, dtype, rules.CUSPARSELT, capability)
    if not ok:
        return reason
    return f"needs padding, not done on the direct path: {reason}" if reason else ""


def _fp8_shape_refusal(shape) -> str:
    if shape[0] % 32 or shape[1] % 32:
        return f"{shape[0]}x{shape[1]}: the fp8 kernels here need both dimensions multiples of 32"
    return ""


def _pad_tokens(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = (-x.shape[0]) % multiple
    return F.pad(x, (0, 0, 0, extra)) if extra else x


def _plan(packed, x, alpha=None, out_dtype=None) -> cslt.Plan:
    try:
        return cslt.search(packed, x.t(), alpha, out_dtype)
    except Exception as exc:           # the search refusing is reported; the default plan still runs
        return cslt.Plan(source=f"search failed ({first_line(exc)}): default")


def _direct_half(base, masked, inputs, dtype, device, options):
    try:
        weights = [masked.to(device, dtype) for _ in range(len(inputs))]
        packed = [torch._cslt_compress(w) for w in weights]
        plan = _plan(packed[0], _pad_tokens(inputs[0], 8))
    except Exception as exc:
        base.status, base.reason = "failed", f"compress: {first_line(exc)}"
        return base
    base.plan, base.weight_bytes = plan.describe(), packed[0].numel() * packed[0].element_size()
    tokens = base.tokens
    fns = [lambda x, p=p: cslt.sparse_mm(p, _pad_tokens(x, 8), plan)[:tokens] for p in packed]
    reference = inputs[0].double() @ weights[0].double().t()
    del weights
    return _measure(_rotating(fns), inputs, reference, cslt.HALF_TOLERANCE, device, options, base)


def _fp8_dense(base, masked, inputs, device, options):
    quantized = [cslt.fp8_rowwise(masked.to(device)) for _ in range(len(inputs))]
    base.weight_bytes = masked.numel()
    fns = [lambda x, q=q: cslt.scaled_mm_rowwise(*cslt.fp8_rowwise(x), *q) for q in quantized]
    reference = cslt.fp8_reference(*cslt.fp8_rowwise(inputs[0]), *quantized[0])
    return _measure(_rotating(fns), inputs, reference, cslt.FP8_TOLERANCE, device, options, base)


def _fp8_cslt(base, masked, inputs, device, options):
    try:
        quantized = [cslt.fp8_rowwise(masked.to(device)) for _ in range(len(inputs))]
        packed = [torch._cslt_compress(wq) for wq, _ in quantized]
        xq, xs = cslt.fp8_tensorwise(_pad_tokens(inputs[0], 16))
        plan = _plan(packed[0], xq, cslt.fp8_alpha(quantized[0][1], xs), torch.bfloat16)
    except Exception as exc:
        base.status, base.reason = "failed", f"compress: {first_line(exc)}"
        return base
    base.plan, base.weight_bytes = plan.describe(), packed[0].numel() * packed[0].element_size()
    tokens = base.tokens

    def call(x, p, ws):
        xq, xs = cslt.fp8_tensorwise(_pad_tokens(x, 16))
        return cslt.sparse_mm(p, xq, plan, cslt.fp8_alpha(ws, xs), torch.bfloat16)[:tokens]

    fns = [lambda x, p=p, q=q: call(x, p, q[1]) for p, q in zip(packed, quantized)]
    reference = cslt.fp8_reference(*cslt.fp8_tensorwise(inputs[0]), *quantized[0])
    return _measure(_rotating(fns), inputs, reference, cslt.FP8_TOLERANCE, device, options, base)


def _torchao(base, masked, inputs, device, options):
    try:
        layers = []
        for _ in range(len(inputs)):
            layer = nn.Sequential(nn.Linear(masked.shape[1], masked.shape[0], bias=False)).to(device, torch.bfloat16)
            with torch.no_grad():
                layer[0].weight.copy_(masked)
            cslt.torchao_fp8_24(layer, ["0"])
            layers.append(layer)
    except Exception as exc:
        base.status, base.reason = "failed", f"torchao: {first_line(exc)}"
        return base
    base.plan = f"torchao {getattr(cslt.torchao, '__version__', '?')} {cslt.torchao_config().__name__}"
    reference = inputs[0].double() @ masked.to(device).bfloat16().double().t()
    fns = [lambda x, m=m: m(x) for m in layers]
    return _measure(_rotating(fns), inputs, reference, TORCHAO_TOLERANCE, device, options, base)


def _measure(fn, inputs, reference, tolerance, device, options, base: KernelResult) -> KernelResult:
    try:
        with torch.no_grad():
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            error = rel_error(fn(inputs[0]), reference)
            samples = time_cuda(fn, inputs, options)
            base.median_ms, base.spread_ms = median_and_spread(samples)
            base.samples, base.rel_error, base.status = len(samples), error, "ok"
            base.checked, base.tolerance = error <= tolerance, tolerance
            base.host_ms = host_ms(fn, inputs)
            try:
                base.kernel_ms = graph_kernel_ms(fn, inputs, options)
            except Exception as exc:
                base.reason = f"not capturable in a CUDA graph: {first_line(exc)}"
            base.limited_by = "host" if base.host_ms > (base.kernel_ms or base.median_ms) else "kernel"
            base.peak_bytes = int(torch.cuda.max_memory_allocated(device))
    except Exception as exc:
        base.status, base.reason = "failed", first_line(exc)
    return base


def _rotating(fns: list):
    state = {"i": 0}

    def fn(x):
        state["i"] = (state["i"] + 1) % len(fns)
        return fns[state["i"]](x)
    return fn
