"""Dense weights kept on disk while a run changes them in memory, so that a cancel can put them back.

A run over a model in memory must be able to undo itself. Keeping a copy of every pruned weight in
memory costs as much as the linear layers themselves (0.4 GB on the demo, 13 GB for a 7B model in
fp16); the copies are only read back on cancel, and each layer's once more for its output-error probe.
So they go to a private temporary folder, one safetensors file per layer, and the folder is removed
when the run ends. Reads come back through the page cache, which the process's resident set does not
count.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..formats.scratch import scratch_folder


class WeightStash:
    def __init__(self):
        self._folder: Path | None = None
        self._files: dict[str, Path] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def __iter__(self):
        return iter(self._files)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        if self._folder is None:
            self._folder = scratch_folder("compression-studio-dense-")
        path = self._folder / f"{len(self._files)}.safetensors"
        save_file({"weight": tensor.detach().to("cpu").contiguous()}, str(path))
        self._files[name] = path

    def get(self, name: str) -> torch.Tensor:
        return load_file(str(self._files[name]))["weight"]

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = None
        self._files.clear()
