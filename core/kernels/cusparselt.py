"""cuSPARSELt called directly, and fp8 (row-wise scaled dense, fp8 + 2:4) for Hopper.

`torch.sparse.to_sparse_semi_structured` rebuilds cuSPARSELt's descriptors and plan on every call
(0.4–1.3 ms on an H200 with torch 2.11), which no decode step can afford. Here the weight is compressed
once (`torch._cslt_compress`), the algorithm is searched once per (shape, token count, dtype)
(`torch._C._cusparselt.mm_search`, which returns the algorithm id and split-k settings), and every call
is `torch._cslt_sparse_mm(packed, xᵀ, alg_id=…, split_k=…, transpose_result=True)`: y = x Wᵀ.

Torch's private functions change between releases, so each is looked up, not assumed: a missing one
is a reason (`direct_support`, `fp8_support`, `torchao_support`) that the benchmark reports as a
`skipped` row. fp8 is e4m3 with float32 scales: row-wise (one per token, one per output channel) for
the dense `torch._scaled_mm`. cuSPARSELt's only scaling is `alpha` on the result: a vector of one value
per output channel (the weight's row scales times the activation's one scale), never a single number,
which torch reads back with `.item()` (a sync per call that no CUDA graph can capture). torchao's fp8
2:4 config (row-wise, CUTLASS for sm90) is used where torchao is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

try:
    from torch._C import _cusparselt as _CSLT
except ImportError:          # CPU builds have no cuSPARSELt bindings
    _CSLT = None
try:
    import torchao
    from torchao import quantization as _tao_quant
except ImportError:          # optional: `pip install torchao`
    torchao, _tao_quant = None, None

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0                      # largest finite e4m3fn
# The fp8 kernels are checked against the float64 product of the *dequantized* operands (what fp8 can
# hold), so the tolerance covers accumulation and the bf16 output's rounding, not the quantization.
FP8_TOLERANCE = 2e-2
HALF_TOLERANCE = 1e-2                # fp16/bf16 against the float64 product of the same weight
TORCHAO_MISSING = "torchao not installed: pip install torchao"
TORCHAO_CONFIGS = ("Float8DynamicActivationFloat8SemiSparseWeightConfig",)


def direct_support() -> str:
    """"" when cuSPARSELt can be called directly in this torch, else why not."""
    missing = [n for n in ("_cslt_compress", "_cslt_sparse_mm") if not hasattr(torch, n)]
    if missing:
        return f"torch {torch.__version__} has no torch.{' or torch.'.join(missing)}"
    if _CSLT is None:
        return f"torch {torch.__version__} was built without cuSPARSELt (no torch._C._cusparselt)"
    return ""


def search_support() -> str:
    """Which search this torch offers: "mm_search", "_cslt_sparse_mm_search" (algorithm id only) or ""."""
    if _CSLT is not None and hasattr(_CSLT, "mm_search"):
        return "mm_search"
    if hasattr(torch, "_cslt_sparse_mm_search"):
        return "_cslt_sparse_mm_search"
    return ""


def fp8_support(capability: tuple[int, int] | None) -> str:
    if FP8 is None:
        return f"torch {torch.__version__} has no float8_e4m3fn"
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm"
    if capability is None:
        return "no CUDA device: fp8 matmuls need an NVIDIA GPU of compute capability 8.9 or newer"
    if tuple(capability) < (8, 9):
        return f"compute capability {capability[0]}.{capability[1]} has no fp8 tensor cores (8.9 or newer needed)"
    return ""


def torchao_support(capability: tuple[int, int] | None) -> str:
    if torchao is None:
        return TORCHAO_MISSING
    if torchao_config() is None:
        return (f"torchao {getattr(torchao, '__version__', '?')} has none of {', '.join(TORCHAO_CONFIGS)} "
                "(its fp8 2:4 config)")
    if capability is None or tuple(capability) < (9, 0) or tuple(capability) >= (10, 0):
        return "torchao's fp8 2:4 kernel (CUTLASS) is built for compute capability 9.0 (Hopper) only"
    return ""


def torchao_config():
    for name in TORCHAO_CONFIGS:
        config = getattr(_tao_quant, name, None) if _tao_quant is not None else None
        if config is not None:
            return config
    return None


@dataclass(frozen=True)
class Plan:
    """What cuSPARSELt's search chose for one (shape, tokens, dtype); defaults are torch's own."""

    alg_id: int = 0
    split_k: int = 1
    split_k_mode: int | bool | None = None      # int in current torch, bool (one kernel) in older ones
    max_alg_id: int | None = None
    source: str = "default"

    def describe(self) -> str:
        mode = "" if self.split_k_mode is None else f", split-k mode {self.split_k_mode}"
        top = "" if self.max_alg_id is None else f" of 0..{self.max_alg_id}"
        return f"alg {self.alg_id}{top}, split-k {self.split_k}{mode} ({self.source})"

    def kwargs(self) -> dict:
        out = {"alg_id": self.alg_id, "split_k": self.split_k}
        if isinstance(self.split_k_mode, bool):
            out["split_k_one_kernel"] = self.split_k_mode
        elif self.split_k_mode is not None:
            out["split_k_mode"] = self.split_k_mode
        return out


def parse_search(result, source: str) -> Plan:
    """mm_search returns (alg_id, split_k, split_k_mode or split_k_one_kernel, max_alg_id); the older
    `_cslt_sparse_mm_search` an algorithm id alone."""
    if isinstance(result, (tuple, list)):
        values = list(result) + [None] * (4 - len(result))
        mode = values[2] if isinstance(values[2], bool) or values[2] is None else int(values[2])
        return Plan(int(values[0]), int(values[1] if values[1] is not None else 1), mode,
                    None if values[3] is None else int(values[3]), source)
    return Plan(int(result), source=source)


def search(packed: torch.Tensor, dense_b: torch.Tensor, alpha: torch.Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> Plan:
    """cuSPARSELt's own search for A·B with `transpose_result` (the layout `sparse_mm` calls)."""
    kind = search_support()
    if kind == "mm_search":
        return parse_search(_CSLT.mm_search(packed, dense_b, None, alpha, out_dtype, True), "mm_search")
    if kind:
        return parse_search(torch._cslt_sparse_mm_search(packed, dense_b, alpha=alpha, out_dtype=out_dtype,
                                                         transpose_result=True), kind)
    return Plan(source=f"no search in torch {torch.__version__}: default algorithm")


def sparse_mm(packed: torch.Tensor, x: torch.Tensor, plan: Plan, alpha: torch.Tensor | None = None,
              out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y [tokens, out] = x [tokens, in] · Wᵀ, W the 2:4 weight `packed` by `torch._cslt_compress`."""
    return torch._cslt_sparse_mm(packed, x.t(), None, alpha, out_dtype, True, **plan.kwargs())


class PlanCache:
    """One search per key; later calls (and CUDA graph capture) reuse the plan."""

    def __init__(self):
        self.plans: dict = {}

    def get(self, key, make) -> Plan:
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = make()
        return plan


def fp8_rowwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, float32 scale per row [rows, 1]) with t ≈ values · scale."""
    scale = (t.detach().float().abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def fp8_tensorwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, one float32 scale) with t ≈ values · scale."""
    scale = (t.detach().float().abs().amax() / FP8_MAX).clamp(min=1e-12)
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.reshape(())


def fp8_reference(xq, xs, wq, ws) -> torch.Tensor:
    """The float64 product of the dequantized operands: what an exact fp8 kernel would return."""
    return (xq.double() * xs.double()) @ (wq.double() * ws.double()).t()


def scaled_mm_rowwise(xq, xs, wq, ws, out_dtype=torch.bfloat16) -> torch.Tensor:
    """Dense fp8 with row-wise scales: xs [tokens, 1], ws [out, 1]; `torch._scaled_mm` wants wᵀ column-major."""
    return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=out_dtype)


class Fp8Linear(nn.Module):
    """y = x Wᵀ in fp8, row-wise scales, the activation quantized on every call (dynamic)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.wq, self.ws = fp8_rowwise(weight.detach())
        self.bias = None if bias is None else bias.detach().clone()
        self.out_dtype = torch.bfloat16            # row-wise scaled_mm writes bf16 only
        self.out_features, self.in_features = weight.shape

    def forward(self, x):
        flat = x.reshape(-1, self.in_features)
        xq, xs = fp8_rowwise(flat)
        y = scaled_mm_rowwise(xq, xs, self.wq, self.ws, self.out_dtype)
        y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def fp8_alpha(ws: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """cuSPARSELt's alpha vector [out]: the weight's row scales times the activation's scale."""
    return (ws.reshape(-1) * xs).contiguous()


# Plans shared by every layer: one search per (out, in, tokens, dtype), however many layers share a shape.
PLANS = PlanCache()


class CsltLinear(nn.Module):
    """A 2:4 linear layer through cuSPARSELt directly: compressed once, one searched plan per shape,
    token count and dtype (`PLANS`, shared by the layers of a shape).

    `fp8` quantizes the weight per row and each activation per tensor; cuSPARSELt scales each output
    channel by alpha = scale_w[row] · scale_x (it cannot scale per token)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fp8: bool = False):
        super().__init__()
        self.fp8, self.out_dtype = fp8, weight.dtype if weight.dtype != torch.float32 else torch.bfloat16
        if fp8:
            wq, self.ws = fp8_rowwise(weight.detach())
            self.packed = torch._cslt_compress(wq)
        else:
            self.packed, self.ws = torch._cslt_compress(weight.detach().contiguous()), None
        self.bias, self.plans = None if bias is None else bias.detach().clone(), PLANS
        self.out_features, self.in_features = weight.shape

    def forward(self, x):
        flat = x.reshape(-1, self.in_features)
        alpha, out_dtype = None, None
        if self.fp8:
            flat, xs = fp8_tensorwise(flat)
            alpha, out_dtype = fp8_alpha(self.ws, xs), self.out_dtype
        key = (self.out_features, self.in_features, flat.shape[0], self.packed.dtype)
        plan = self.plans.get(key, lambda: search(self.packed, flat.t(), alpha, out_dtype))
        y = sparse_mm(self.packed, flat, plan, alpha, out_dtype)
        y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def torchao_fp8_24(model: nn.Module, names: list[str]) -> None:
    """torchao's fp8 2:4 config applied in place to the named linear layers of `model`."""
    wanted = set(names)
    _tao_quant.quantize_(model, torchao_config()(), filter_fn=lambda module, fqn: fqn in wanted)
