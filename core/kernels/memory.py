"""Memory sampled on a background thread through a whole benchmark: CUDA allocator, driver, process RSS."""

from __future__ import annotations

import threading
import time

import psutil
import torch

from ..events import EventSink
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
