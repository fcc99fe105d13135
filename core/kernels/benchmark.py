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
job context is checked between measurements (`core.kernels.results`, `timing`, `cases`,
`end_to_end` and `memory` hold the parts).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..compute import DTYPES, KERNEL_DTYPES, resolve_device
from ..errors import UserError
from ..events import Finished, Job, as_job
from ..inputs import parse_tokens
from ..models.architectures import weight_matrix
from . import sparse_rules as rules
from .cases import cpu_cases, cuda_cases, distinct_shapes
from .direct_cases import direct_backends, direct_cases
from .end_to_end import end_to_end
from .memory import MemorySampler
from .results import (CPU_NOTE, DENSE, FP8_DENSE, INT8_DENSE, BenchReport, EndToEndMeasured, KernelMeasured,
                      KernelResult, cost_per_million)

DEFAULT_TOKENS = (1, 16, 128, 512, 2048, 8192)


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
    direct: bool = True             # CUDA: cuSPARSELt called directly with its searched plan (issue 14)
    fp8: bool = True                # CUDA: dense fp8 row-wise, fp8 + 2:4 (cuSPARSELt, torchao)
    gpu_price: float = 0.0          # $ per GPU-hour: end-to-end rows get a cost per million tokens

    @classmethod
    def from_choices(cls, *, tokens: str, **choices) -> "BenchOptions":
        """Options from what a user typed: `tokens` as comma-separated counts, the rest as fields."""
        return cls(tokens=parse_tokens(tokens, "token counts"), **choices)

    def validate(self) -> None:
        if self.dtype not in KERNEL_DTYPES + ("float16", "bfloat16"):
            raise UserError(f"benchmark dtype {self.dtype!r}: choose fp16 or bf16.")
        if not self.tokens or any(t < 1 for t in self.tokens):
            raise UserError("token counts must be positive integers, e.g. --tokens 1,16,128.")
        if self.gpu_price < 0:
            raise UserError("--gpu-price is dollars per GPU-hour: give a positive number, e.g. 3.5.")
        if self.prompt_tokens < 1 or self.new_tokens < 2:
            raise UserError("end to end needs a prompt of at least 1 token and at least 2 new tokens.")
        resolve_device(self.device)


def run_benchmark(loaded, options: BenchOptions | None = None, job: Job | None = None) -> BenchReport:
    """Kernel cases for every distinct linear shape and token count, then end to end; see the module doc."""
    options = options or BenchOptions()
    options.validate()
    job = as_job(job)
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
    cases = _kernel_cases(shapes, options, device, capability, backends)
    count = len(shapes) * len(options.tokens) * _cases_per_group(device, options, usable)
    total = count + (1 if options.end_to_end else 0)
    with MemorySampler(device, options.sample_interval_s) as sampler:
        try:
            for i, (detail, measure) in enumerate(cases):
                job.check()
                job.phase("benchmark", i, total, detail)
                result = measure()
                _label(result, report)
                _fill_speedup(result, report.kernels)
                report.kernels.append(result)
                job.emit(KernelMeasured(result))
                sampler.drain(job.emit)
            if options.end_to_end:
                job.check()
                job.phase("benchmark", count, total, "end to end")
                for result in end_to_end(loaded, options, device, capability, backends, report.notes, job):
                    result.gpu, result.torch_version, result.model = report.device_name, torch.__version__, loaded.name
                    result.cost_per_million = cost_per_million(result.tokens_per_s, options.gpu_price)
                    report.end_to_end.append(result)
                    job.emit(EndToEndMeasured(result))
                    sampler.drain(job.emit)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report.memory = list(sampler.samples)
        sampler.drain(job.emit)
    for note in report.notes:
        job.message(note)
    report.seconds = time.perf_counter() - started
    job.phase("benchmark", total, total, "done")
    job.emit(Finished(report))
    return report


def _cases_per_group(device, options, usable) -> int:
    if device.type != "cuda":
        return 3                                        # dense, masked dense, CSR
    dtypes = 1 + (1 if options.int8 and usable else 0)
    direct = len(direct_backends(options)) if options.direct else 0
    return dtypes * (1 + len(rules.BACKENDS)) + direct  # dense + every backend (run or skipped with a reason)


def _kernel_cases(shapes, options, device, capability, backends):
    for shape, (count, layer) in shapes.items():
        weight = weight_matrix(layer).detach()
        for tokens in options.tokens:
            detail = f"{shape[0]}x{shape[1]}, {tokens} tokens"
            if device.type != "cuda":
                for measure in cpu_cases(shape, count, weight, tokens, options, device):
                    yield detail, measure
                continue
            dtypes = [DTYPES[options.dtype]] + ([torch.int8] if options.int8 and not all(backends.values()) else [])
            for dtype in dtypes:
                for measure in cuda_cases(shape, count, weight, tokens, dtype, backends, capability, options, device):
                    yield f"{detail}, {rules.dtype_name(dtype)}", measure
            if options.direct:
                gpu = torch.cuda.get_device_name(device)
                for measure in direct_cases(shape, count, weight, tokens, dtypes[0], capability, options, device, gpu):
                    yield f"{detail}, direct", measure


# What "checked correct" means for the rows that do not set it themselves: rel. error against float64.
TOLERANCES = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 1e-2, "int8": 1e-6}


def _label(result: KernelResult, report: BenchReport) -> None:
    """Every row says the GPU, the torch, and whether its result was checked against the reference."""
    result.gpu = result.gpu or report.device_name
    result.torch_version = result.torch_version or report.torch_version
    if result.checked is None and result.rel_error is not None and result.dtype in TOLERANCES:
        result.tolerance = TOLERANCES[result.dtype]
        result.checked = result.rel_error <= result.tolerance


def _fill_speedup(result: KernelResult, done: list[KernelResult]) -> None:
    if result.status != "ok":
        return
    baseline = {"int8": INT8_DENSE, "fp8": FP8_DENSE}.get(result.dtype, DENSE)
    for other in done:
        if (other.backend == baseline and other.status == "ok" and other.shape == result.shape
                and other.tokens == result.tokens and other.dtype == result.dtype):
            result.speedup = other.median_ms / result.median_ms
            return
    if result.backend == baseline:
        result.speedup = 1.0
