"""The benchmark's records, the events that stream them, and the report in CSV, JSON and Markdown."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields

from ..events import Event

CPU_NOTE = "CPU: no sparse tensor cores, no speedup expected"
DENSE, MASKED, CSR, INT8_DENSE = "dense", "masked-dense", "csr", "dense-int8"
# Issue 14's paths: cuSPARSELt called directly with a searched plan, row-wise fp8 dense, fp8 + 2:4.
CSLT_DIRECT, FP8_DENSE, FP8_CSLT, FP8_TORCHAO = "cusparselt-direct", "dense-fp8", "cusparselt-fp8", "torchao-fp8-24"


@dataclass
class KernelResult:
    shape: tuple[int, int]          # [out, in]
    layers: int                     # linear layers of the model with this shape
    tokens: int
    dtype: str                      # fp16 | bf16 | int8 | fp32
    backend: str                    # dense | cusparselt | cutlass | dense-int8 | masked-dense | csr
    device: str
    status: str                     # ok | skipped | failed
    reason: str = ""
    median_ms: float | None = None
    spread_ms: float | None = None  # interquartile range of the samples
    samples: int = 0
    speedup: float | None = None    # dense median / this median, same shape, tokens and dtype
    rel_error: float | None = None  # ‖y − y_ref‖ / ‖y_ref‖, y_ref the float64 product of the same weight
    weight_bytes: int | None = None
    peak_bytes: int | None = None   # CUDA: peak allocated during the measurement
    expected_gain: bool | None = None
    expectation: str = ""
    gpu: str = ""                   # the device's name ("CPU" without CUDA)
    torch_version: str = ""
    checked: bool | None = None     # rel_error within `tolerance` of the reference product (None: not run)
    tolerance: float | None = None
    host_ms: float | None = None    # wall clock per call of launches without a sync (the CPU's share)
    kernel_ms: float | None = None  # the GPU's time alone: the calls replayed from a CUDA graph
    limited_by: str = ""            # "host" when host_ms exceeds the kernel's median, else "kernel"
    plan: str = ""                  # cuSPARSELt: the algorithm id and split-k the search chose


@dataclass
class EndToEndResult:
    variant: str                    # dense | cusparselt | cutlass | csr
    device: str
    dtype: str
    status: str
    reason: str = ""
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_ms: float | None = None           # prompt in, first new token out
    itl_ms: float | None = None            # median time per further token
    tokens_per_s: float | None = None      # new tokens / whole generation time
    peak_bytes: int | None = None
    weight_bytes: int | None = None        # the prunable linear weights as stored
    converted_layers: int = 0
    total_layers: int = 0
    gpu: str = ""
    torch_version: str = ""
    model: str = ""                        # which architecture (demo, 8B-shaped blocks)
    phase: str = "generate"                # generate (prompt then new tokens) | prefill | decode
    batch: int = 1
    graphed: bool = False                  # decode step captured in a CUDA graph and replayed
    checked: bool | None = None            # rel_error within tolerance (None: nothing to compare with)
    rel_error: float | None = None         # first decode logits against dense bf16's (graphed: eager's)
    tolerance: float | None = None
    cost_per_million: float | None = None  # $ per million tokens at the user's $/GPU-hour


@dataclass
class MemorySample:
    t_s: float
    allocated_bytes: int | None     # torch's CUDA allocator
    reserved_bytes: int | None
    nvml_used_bytes: int | None     # the whole GPU, as the driver sees it
    rss_bytes: int | None           # this process's resident memory (the CPU's view)


@dataclass(frozen=True)
class KernelMeasured(Event):
    result: KernelResult


@dataclass(frozen=True)
class EndToEndMeasured(Event):
    result: EndToEndResult


@dataclass(frozen=True)
class MemorySampled(Event):
    sample: MemorySample


@dataclass
class BenchReport:
    model: str
    device: str
    device_name: str
    capability: tuple[int, int] | None
    torch_version: str
    note: str
    backends: dict                                  # backend -> "" (available) or the reason it is not
    options: dict
    kernels: list[KernelResult] = field(default_factory=list)
    end_to_end: list[EndToEndResult] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_csv(self) -> str:
        """One row per measurement: kernel rows, then end-to-end rows, told apart by `kind`."""
        kernel_cols = [f.name for f in fields(KernelResult)]
        e2e_cols = [f.name for f in fields(EndToEndResult) if f.name not in kernel_cols]
        columns = ["kind", "model"] + kernel_cols + e2e_cols
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.kernels:
            data = asdict(row)
            data["shape"] = f"{row.shape[0]}x{row.shape[1]}"
            writer.writerow({"kind": "kernel", "model": self.model, **data})
        for row in self.end_to_end:
            writer.writerow({"kind": "end_to_end", "model": self.model, **asdict(row)})
        return out.getvalue()

    def to_markdown(self) -> str:
        lines = [f"**{self.model}** on {self.device_name} ({self.device}), torch {self.torch_version}"
                 + (f" — {self.note}" if self.note else ""), ""]
        backends = [b for b in dict.fromkeys(r.backend for r in self.kernels)]
        lines.append("| shape | tokens | dtype | " + " | ".join(f"{b} ms (×)" for b in backends) + " | rel. error | note |")
        lines.append("|" + "---|" * (4 + len(backends)) + "---|")
        groups: dict = {}
        for r in self.kernels:
            groups.setdefault((r.shape, r.tokens, r.dtype), {})[r.backend] = r
        for (shape, tokens, dtype), row in groups.items():
            cells = [_cell(row.get(b)) for b in backends]
            errors = [r.rel_error for r in row.values() if r.rel_error is not None and r.backend not in (DENSE, INT8_DENSE)]
            notes = sorted({_short(r.expectation) for r in row.values() if r.expectation})
            error = f"{max(errors):.1e}" if errors else "–"
            lines.append(f"| {shape[0]}x{shape[1]} | {tokens} | {dtype} | " + " | ".join(cells)
                         + f" | {error} | {'; '.join(notes)} |")
        if self.end_to_end:
            lines += ["", "| end to end | status | TTFT ms | ITL ms | tokens/s | peak MiB | linear weights MiB | converted |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in self.end_to_end:
                lines.append(f"| {r.variant} ({r.dtype}) | {r.status}{': ' + r.reason if r.reason else ''} | "
                             f"{_num(r.ttft_ms)} | {_num(r.itl_ms)} | {_num(r.tokens_per_s, 1)} | {_mib(r.peak_bytes)} | "
                             f"{_mib(r.weight_bytes)} | {r.converted_layers}/{r.total_layers} |")
        return "\n".join(lines) + "\n"


def cost_per_million(tokens_per_s: float | None, gpu_price_per_hour: float) -> float | None:
    """Dollars per million tokens at `gpu_price_per_hour` (0: no price set)."""
    if not tokens_per_s or gpu_price_per_hour <= 0:
        return None
    return gpu_price_per_hour / 3600 / tokens_per_s * 1e6


def _short(expectation: str) -> str:
    return "no sparse tensor cores" if expectation == CPU_NOTE else expectation.split(":")[0]


def _cell(r: KernelResult | None) -> str:
    if r is None:
        return "–"
    if r.status != "ok":
        return r.status
    return f"{r.median_ms:.3f}" + (f" ({r.speedup:.2f}×)" if r.speedup is not None else "")


def _num(value, digits=2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"
