"""Calibration activations at one block boundary: every batch's hidden states, in the model's dtype.

The pipeline holds at most two stores at once (a block's inputs and its outputs). When the two would
not fit the memory budget, both live on disk instead: one safetensors file per batch in a private
temporary folder, read back one batch at a time, so host memory holds a single batch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..formats.scratch import scratch_folder


class ActivationStore:
    """An indexed list of hidden-state tensors, kept in memory or spilled to `spill_dir`."""

    def __init__(self, spill_dir: Path | None = None):
        self._spill_dir = spill_dir
        self._memory: list[torch.Tensor] = []
        self._files: list[Path] = []
        if spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)

    @property
    def spilled(self) -> bool:
        return self._spill_dir is not None

    def append(self, hidden: torch.Tensor) -> None:
        if self._spill_dir is None:
            self._memory.append(hidden)
            return
        path = self._spill_dir / f"{id(self):x}-{len(self._files)}.safetensors"
        save_file({"hidden": hidden.detach().to("cpu").contiguous()}, str(path))
        self._files.append(path)

    def __len__(self) -> int:
        return len(self._files) if self.spilled else len(self._memory)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not self.spilled:
            return self._memory[index]
        return load_file(str(self._files[index]))["hidden"]

    def close(self) -> None:
        """Free the tensors (delete the files) once the next block's inputs exist."""
        self._memory.clear()
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()


class ActivationBudget:
    """Decides, once per run, whether a block's inputs and outputs fit `max_bytes` of memory together.

    `max_bytes=None` means no limit. Spilled stores share one temporary folder, removed by `close()`.
    """

    def __init__(self, max_bytes: int | None, bytes_per_store: int):
        self.max_bytes = max_bytes
        self.bytes_per_store = bytes_per_store
        self.spill = max_bytes is not None and 2 * bytes_per_store > max_bytes
        self._folder = scratch_folder("compression-studio-activations-") if self.spill else None

    def new_store(self) -> ActivationStore:
        return ActivationStore(self._folder)

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def hidden_bytes(nsamples: int, seqlen: int, hidden_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block boundary's hidden states for the whole calibration set."""
    return nsamples * seqlen * hidden_size * torch.empty((), dtype=dtype).element_size()
