"""Honest kernel times: warm-up, CUDA events around repeated calls, rotated inputs, median and spread."""

from __future__ import annotations

import math
import statistics
import time

import torch


def time_cpu(fn, inputs, options) -> list[float]:
    fn(inputs[0])
    first = _cpu_once(fn, inputs[0])
    count = _sample_count(first, options)
    return [_cpu_once(fn, inputs[i % len(inputs)]) for i in range(count)]


def _cpu_once(fn, x) -> float:
    tic = time.perf_counter()
    fn(x)
    return (time.perf_counter() - tic) * 1000


def _sample_count(first_ms: float, options) -> int:
    wanted = int(options.budget_s * 1000 / max(first_ms, 1e-6))
    return max(options.min_samples, min(options.max_samples, wanted))


def time_cuda(fn, inputs, options) -> list[float]:
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


def median_and_spread(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 4:
        return statistics.median(samples), max(samples) - min(samples)
    q = statistics.quantiles(samples, n=4)
    return statistics.median(samples), q[2] - q[0]


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    denom = float(ref.norm())
    return float((y.double() - ref).norm()) / denom if denom else float((y.double() - ref).norm())


def rotation_count(set_bytes: int, device: torch.device, options) -> int:
    """How many (weight, input) sets to rotate through so that the cache cannot hold them all."""
    if device.type != "cuda":
        return 2
    target = options.rotate_bytes or 3 * getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    return max(2, min(256, math.ceil(target / max(set_bytes, 1)), (2 << 30) // max(set_bytes, 1)))


def host_ms(fn, inputs, calls: int = 50) -> float:
    """The CPU's cost per call: wall clock around `calls` launches with no sync between them (the GPU
    queue absorbs the work), after a sync so nothing earlier is counted. Above the kernel's time, the
    host, not the GPU, limits the rate."""
    torch.cuda.synchronize()
    tic = time.perf_counter()
    for i in range(calls):
        fn(inputs[i % len(inputs)])
    elapsed = time.perf_counter() - tic
    torch.cuda.synchronize()
    return elapsed * 1000 / calls


def graph_kernel_ms(fn, inputs, options, calls: int | None = None) -> float:
    """The GPU's time alone: one pass over the inputs captured in a CUDA graph (no Python, no launches
    paid per call), replayed between CUDA events; median per call. Raises when the call cannot be captured."""
    calls = calls or max(len(inputs), 8)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):                 # warm-up on a side stream, as capture requires
        for i in range(3):
            fn(inputs[i % len(inputs)])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(inputs[i % len(inputs)])
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(max(options.min_samples, min(options.max_samples, 10))):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(samples)
