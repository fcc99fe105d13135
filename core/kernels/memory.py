"""Memory sampled on a background thread through a whole benchmark: CUDA allocator, driver, process RSS;
and live VRAM on any job's progress events (`with_vram`), which is a no-op without CUDA."""

from __future__ import annotations

import threading
import time

import psutil
import torch

from ..events import Event, EventSink, Job

try:
    import pynvml
except ImportError:          # optional: nvidia-ml-py gives the driver's view of the whole GPU
    pynvml = None
from .results import MemorySample, MemorySampled


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
        cuda = self.device.type == "cuda"
        nvml = None
        if self._nvml is not None:
            try:
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
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception:
        return None


def cuda_vram(device: torch.device | None = None) -> tuple[int, int]:
    """(allocated, reserved) bytes of torch's CUDA allocator on `device`."""
    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)


def with_vram(job: Job, sampler=None, interval_s: float = 0.5, clock=time.perf_counter) -> Job:
    """`job` whose events are preceded, at most every `interval_s`, by a `MemorySampled` with live VRAM.

    `sampler()` returns (allocated, reserved) bytes; by default torch's CUDA allocator. Without CUDA and
    without a sampler the job is returned as it is: nothing is sampled on the CPU. Sampling happens on
    the job's own thread when it reports progress, so no thread is started and nothing is left running.
    """
    if sampler is None:
        if not torch.cuda.is_available():
            return job
        sampler = cuda_vram
    started, last = clock(), [None]

    def on_event(event: Event) -> None:
        now = clock()
        if not isinstance(event, MemorySampled) and (last[0] is None or now - last[0] >= interval_s):
            last[0] = now
            allocated, reserved = sampler()
            job.emit(MemorySampled(MemorySample(now - started, allocated, reserved, None, None)))
        job.emit(event)
    return job.with_sink(on_event)
