"""The sparse-kernel benchmark: 2:4 against dense for a model's linear shapes, and end to end.

Per distinct linear shape of the loaded model and per token count, dense `F.linear` is timed against
the 2:4 semi-structured kernels present (cuSPARSELt, CUTLASS) in fp16 or bf16, and int8 where a
backend takes it. Every case is checked first (`core.sparse_rules`) and skipped with its reason.
CUDA events, warm-up, the median of repeated samples, and rotated weight/input copies (enough to
spill the L2 cache) make the times honest; each sparse result is compared with the dense product of
the same masked weight. A sampler records memory through the whole run.

Without CUDA the same pipeline runs on the CPU (dense, masked dense, CSR via `torch.sparse.mm`) and
says so: "CPU: no sparse tensor cores, no speedup expected".

Times are eager-mode PyTorch: they include the Python dispatch of the semi-structured tensor subclass
and the padding of the tokens, which is what an eager model pays; for decode-sized inputs that
overhead, not the matrix math, often decides.

Results stream out as typed events (`KernelMeasured`, `EndToEndMeasured`, `MemorySampled`) and the
`CancelToken` is checked between measurements.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from . import sparse_rules as rules
from .architectures import weight_matrix
from .errors import UserError
from .events import CancelToken, Event, EventSink, Finished, Message, Phase, ignore
from .masks import Pattern, follows_pattern, nm_mask
from .plan import resolve_device

CPU_NOTE = "CPU: no sparse tensor cores, no speedup expected"
DEFAULT_TOKENS = (1, 16, 128, 512, 2048, 8192)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float16": torch.float16, "bfloat16": torch.bfloat16}
TWO_FOUR = Pattern(2, 4)
DENSE, MASKED, CSR, INT8_DENSE = "dense", "masked-dense", "csr", "dense-int8"


# ---------------------------------------------------------------- results


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
class BenchOptions:
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    dtype: str = "fp16"
    int8: bool = True
    device: str = "auto"
    warmup: int = 3
    max_samples: int = 25
    budget_s: float = 0.4           # per case: fewer samples for slow cases, never under `min_samples`
    min_samples: int = 3
    rotate_bytes: int = 0           # bytes of weight+input copies to rotate through; 0 = 3x the L2 cache
    end_to_end: bool = True
    prompt_tokens: int = 128
    new_tokens: int = 32
    sample_interval_s: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"benchmark dtype {self.dtype!r}: choose fp16 or bf16.")
        if not self.tokens or any(t < 1 for t in self.tokens):
            raise UserError("token counts must be positive integers, e.g. --tokens 1,16,128.")
        if self.prompt_tokens < 1 or self.new_tokens < 2:
            raise UserError("end to end needs a prompt of at least 1 token and at least 2 new tokens.")
        resolve_device(self.device)


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


# ---------------------------------------------------------------- memory sampling


class MemorySampler:
    """Samples memory on a background thread; the benchmark drains the samples into events."""

    def __init__(self, device: torch.device, interval_s: float):
        self.device, self.interval_s, self.samples = device, interval_s, []
        self._stop, self._start, self._sent = threading.Event(), time.perf_counter(), 0
        self._nvml = _nvml_handle(device) if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)

    def sample(self) -> MemorySample:
        import psutil

        cuda = self.device.type == "cuda"
        nvml = None
        if self._nvml is not None:
            try:
                import pynvml

                nvml = int(pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used)
            except Exception:
                nvml = None
        return MemorySample(time.perf_counter() - self._start,
                            torch.cuda.memory_allocated(self.device) if cuda else None,
                            torch.cuda.memory_reserved(self.device) if cuda else None,
                            nvml, psutil.Process().memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval_s)

    def drain(self, on_event: EventSink) -> None:
        new, self._sent = self.samples[self._sent:], len(self.samples)
        for s in new:
            on_event(MemorySampled(s))


def _nvml_handle(device: torch.device):
    """NVML when nvidia-ml-py is installed; the index is torch's, which matches unless devices are remapped."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception:
        return None


# ---------------------------------------------------------------- timing


def _time_cpu(fn, inputs, options: BenchOptions) -> list[float]:
    fn(inputs[0])
    first = _cpu_once(fn, inputs[0])
    count = _sample_count(first, options)
    return [_cpu_once(fn, inputs[i % len(inputs)]) for i in range(count)]


def _cpu_once(fn, x) -> float:
    tic = time.perf_counter()
    fn(x)
    return (time.perf_counter() - tic) * 1000


def _sample_count(first_ms: float, options: BenchOptions) -> int:
    wanted = int(options.budget_s * 1000 / max(first_ms, 1e-6))
    return max(options.min_samples, min(options.max_samples, wanted))


def _time_cuda(fn, inputs, options: BenchOptions) -> list[float]:
    """Median-ready samples in ms per call. A sample times `inner` calls between two CUDA events so that
    microsecond kernels are not measured against the event resolution; inputs rotate on every call."""
    for i in range(options.warmup):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(inputs[0])
    end.record()
    torch.cuda.synchronize()
    first = max(start.elapsed_time(end), 1e-4)
    inner = max(1, min(100, math.ceil(0.5 / first)))        # about half a millisecond per sample
    count = _sample_count(first * inner, options)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
    call = 0
    for begin, finish in events:
        begin.record()
        for _ in range(inner):
            fn(inputs[call % len(inputs)])
            call += 1
        finish.record()
    torch.cuda.synchronize()
    return [b.elapsed_time(f) / inner for b, f in events]


def _summary(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 4:
        return statistics.median(samples), max(samples) - min(samples)
    q = statistics.quantiles(samples, n=4)
    return statistics.median(samples), q[2] - q[0]


def _rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    denom = float(ref.norm())
    return float((y.double() - ref).norm()) / denom if denom else float((y.double() - ref).norm())


# ---------------------------------------------------------------- shapes and weights


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


def _rotation(set_bytes: int, device: torch.device, options: BenchOptions) -> int:
    """How many (weight, input) sets to rotate through so that the cache cannot hold them all."""
    if device.type != "cuda":
        return 2
    target = options.rotate_bytes or 3 * getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    return max(2, min(256, math.ceil(target / max(set_bytes, 1)), (2 << 30) // max(set_bytes, 1)))


# ---------------------------------------------------------------- the kernel cases


def _measure(fn, inputs, reference, device, options, base: KernelResult) -> KernelResult:
    """Time `fn` over rotated `inputs`, check its first output against `reference`, fill `base`."""
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        error = _rel_error(fn(inputs[0]), reference)
        samples = _time_cuda(fn, inputs, options) if device.type == "cuda" else _time_cpu(fn, inputs, options)
        base.median_ms, base.spread_ms = _summary(samples)
        base.samples, base.rel_error, base.status = len(samples), error, "ok"
        if device.type == "cuda":
            base.peak_bytes = int(torch.cuda.max_memory_allocated(device))
    except Exception as exc:  # a kernel that refuses a case at run time: recorded, never fatal
        base.status, base.reason = "failed", _first_line(exc)
    return base


def _cpu_cases(shape, count, weight, tokens, options, device):
    """dense (the layer's weight), masked dense (2:4 zeros stored densely), CSR (torch.sparse.mm)."""
    dense = weight.detach().float().contiguous()
    masked = two_four(dense)
    csr = _to_csr(masked)
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


def _sparse_class(backend: str):
    return {rules.CUTLASS: torch.sparse.SparseSemiStructuredTensorCUTLASS,
            rules.CUSPARSELT: torch.sparse.SparseSemiStructuredTensorCUSPARSELT}[backend]


def _sparse_bytes(tensor) -> int:
    return sum(t.numel() * t.element_size() for t in (getattr(tensor, a, None) for a in ("packed", "meta"))
               if t is not None)


def _cuda_cases(shape, count, weight, tokens, dtype, backends, capability, options, device):
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
    sets = _rotation((shape[0] * shape[1] + tokens * shape[1]) * elsize, device, options)
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
        sparse = [_sparse_class(backend).from_dense(w) for w in padded]
        del padded
    except Exception as exc:
        base.status, base.reason = "failed", f"conversion: {_first_line(exc)}"
        return base
    base.weight_bytes = _sparse_bytes(sparse[0])
    fns = [_padded_linear(s, shape[0], target[1] - shape[1]) for s in sparse]
    return _measure(_rotating(fns), inputs, reference, device, options, base)


def _rotating(fns: list):
    """One callable that uses the next weight copy on every call (all copies hold the same values)."""
    state = {"i": 0}

    def fn(x):
        state["i"] = (state["i"] + 1) % len(fns)
        return fns[state["i"]](x)
    return fn


# ---------------------------------------------------------------- the whole run


def run_benchmark(loaded, options: BenchOptions | None = None, on_event: EventSink = ignore,
                  cancel: CancelToken | None = None) -> BenchReport:
    """Kernel cases for every distinct linear shape and token count, then end to end; see the module doc."""
    options = options or BenchOptions()
    options.validate()
    cancel = cancel or CancelToken()
    device = resolve_device(options.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    capability = rules.device_capability(device) if device.type == "cuda" else None
    backends = rules.available_backends(capability)
    report = BenchReport(
        loaded.name, str(device), torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        capability, torch.__version__, "" if device.type == "cuda" else CPU_NOTE, backends, asdict(options))
    started = time.perf_counter()
    shapes = distinct_shapes(loaded)
    usable = [b for b, why in backends.items() if not why]
    # Cases are made lazily, one shape and token count at a time, so only their tensors are alive.
    jobs = _kernel_jobs(shapes, options, device, capability, backends)
    count = len(shapes) * len(options.tokens) * _cases_per_group(device, options, usable)
    total = count + (1 if options.end_to_end else 0)
    with MemorySampler(device, options.sample_interval_s) as sampler:
        try:
            for i, (detail, job) in enumerate(jobs):
                cancel.check()
                on_event(Phase("benchmark", i, total, detail))
                result = job()
                _fill_speedup(result, report.kernels)
                report.kernels.append(result)
                on_event(KernelMeasured(result))
                sampler.drain(on_event)
            if options.end_to_end:
                cancel.check()
                on_event(Phase("benchmark", count, total, "end to end"))
                for result in end_to_end(loaded, options, device, capability, backends, report.notes, cancel):
                    report.end_to_end.append(result)
                    on_event(EndToEndMeasured(result))
                    sampler.drain(on_event)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report.memory = list(sampler.samples)
        sampler.drain(on_event)
    for note in report.notes:
        on_event(Message(note))
    report.seconds = time.perf_counter() - started
    on_event(Phase("benchmark", total, total, "done"))
    on_event(Finished(report))
    return report


def _cases_per_group(device, options, usable) -> int:
    if device.type != "cuda":
        return 3                                        # dense, masked dense, CSR
    dtypes = 1 + (1 if options.int8 and usable else 0)
    return dtypes * (1 + len(rules.BACKENDS))           # dense + every backend (run or skipped with a reason)


def _kernel_jobs(shapes, options, device, capability, backends):
    for shape, (count, layer) in shapes.items():
        weight = weight_matrix(layer).detach()
        for tokens in options.tokens:
            detail = f"{shape[0]}x{shape[1]}, {tokens} tokens"
            if device.type != "cuda":
                for job in _cpu_cases(shape, count, weight, tokens, options, device):
                    yield detail, job
                continue
            dtypes = [DTYPES[options.dtype]] + ([torch.int8] if options.int8 and not all(backends.values()) else [])
            for dtype in dtypes:
                for job in _cuda_cases(shape, count, weight, tokens, dtype, backends, capability, options, device):
                    yield f"{detail}, {rules.dtype_name(dtype)}", job


def _fill_speedup(result: KernelResult, done: list[KernelResult]) -> None:
    if result.status != "ok":
        return
    baseline = DENSE if result.dtype != "int8" else INT8_DENSE
    for other in done:
        if (other.backend == baseline and other.status == "ok" and other.shape == result.shape
                and other.tokens == result.tokens and other.dtype == result.dtype):
            result.speedup = other.median_ms / result.median_ms
            return
    if result.backend == baseline:
        result.speedup = 1.0


# ---------------------------------------------------------------- end to end


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


def _to_csr(weight: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # "Sparse CSR tensor support is in beta state"
        return weight.detach().to_sparse_csr()


class CsrLinear(nn.Module):
    """A linear layer whose weight is a CSR tensor: y = (W_csr @ xᵀ)ᵀ + b (faster than F.linear with CSR)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight_csr = _to_csr(weight)
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def end_to_end(loaded, options: BenchOptions, device, capability, backends, notes, cancel):
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
            cancel.check()
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
        base.status, base.reason = "failed", _first_line(exc)
    finally:
        _swap_out(model, swapped)
    return base


def _layer_bytes(layer: nn.Module) -> int:
    if isinstance(layer, CsrLinear):
        w = layer.weight_csr
        return sum(t.numel() * t.element_size() for t in (w.crow_indices(), w.col_indices(), w.values()))
    w = layer.weight
    return _sparse_bytes(w) if getattr(w, "packed", None) is not None else w.numel() * w.element_size()


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
        layer.weight = nn.Parameter(_sparse_class(variant).from_dense(dense.detach().contiguous()), requires_grad=False)
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
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output):
    for key in ("cache", "past_key_values"):
        if output.get(key) is not None:
            return output[key]
    raise RuntimeError("the model returned no KV cache; end-to-end decoding needs use_cache support")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
