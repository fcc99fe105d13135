"""Prune a safetensors model that does not fit in memory, writing the export while pruning proceeds.

Each decoder block is read from the source files (`core.models.streaming.StreamedBlocks`), pruned by the
one block loop of `core.pruning.pipeline`, written to the export as a shard of its own (`StreamingExport`,
a block sink), and dropped. The output head and final norm are copied file to file, never run.

The export is an ordinary sharded Hugging Face folder (`model.safetensors.index.json`), written into a
hidden temporary folder and renamed into place at the end, with `sparsity.json` and
`calibration.safetensors` like `core.export.folder.write_export`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.calibration import CalibrationSet, save_calibration
from ..errors import UserError
from ..events import Job, as_job
from ..formats.names import CALIBRATION, INDEX
from ..formats.safetensors_reader import TensorReader
from ..models.loaded import LoadedModel
from ..models.streaming import StreamedBlocks, open_streaming
from ..pruning.pipeline import PruneResult, prune_blocks
from ..pruning.plan import PrunePlan
from .destination import atomic_folder
from .report import build_report, write_report

REST_SHARD_BYTES = 1 << 30     # embeddings, norm and head are copied in shards of at most about this size


class StreamingExport:
    """A block sink: fills a (temporary) export folder block by block; `finish` adds the rest of the folder."""

    def __init__(self, loaded: LoadedModel, reader: TensorReader, folder: Path):
        self.loaded, self.reader = loaded, reader
        self.tmp = folder
        self.blocks_path = loaded.layout.blocks_path
        self.block_count = len(loaded.layout.blocks)
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def _save(self, tensors: dict[str, torch.Tensor], shard: str) -> None:
        save_file(tensors, str(self.tmp / shard), metadata={"format": "pt"})
        for name, tensor in tensors.items():
            self.weight_map[name] = shard
            self.total_bytes += tensor.numel() * tensor.element_size()

    def write_block(self, index: int, block: nn.Module) -> None:
        prefix = f"{self.blocks_path}.{index}."
        tensors = {prefix + name: value.detach().to("cpu", self.reader.dtype(prefix + name)).contiguous()
                   for name, value in block.state_dict().items() if prefix + name in self.reader}
        self._save(tensors, f"model-block-{index:05d}.safetensors")

    def write_rest(self) -> None:
        """Copy every tensor outside the blocks (embeddings, final norm, head) straight from the source files."""
        rest = [n for n in self.reader.names() if not n.startswith(self.blocks_path + ".")]
        shard, size, number = {}, 0, 0
        for name in rest:
            shard[name] = self.reader.get(name)
            size += self.reader.nbytes(name)
            if size >= REST_SHARD_BYTES:
                self._save(shard, f"model-rest-{number:05d}.safetensors")
                shard, size, number = {}, 0, number + 1
        if shard:
            self._save(shard, f"model-rest-{number:05d}.safetensors")

    def finish(self, report: dict, calib: CalibrationSet | None) -> None:
        loaded = self.loaded
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        loaded.model.config.save_pretrained(self.tmp)
        if getattr(loaded.model, "generation_config", None) is not None:
            loaded.model.generation_config.save_pretrained(self.tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(self.tmp)
        if calib is not None:
            save_calibration(calib, self.tmp / CALIBRATION)
        write_report(self.tmp, report)


def prune_streaming(
    model: str | Path | LoadedModel,
    calib: CalibrationSet,
    plan: PrunePlan,
    out: str | Path,
    job: Job | None = None,
    *,
    overwrite: bool = False,
    summarize=None,
    memory_budget: int | None = None,
    compute_dtype: torch.dtype | None = None,
    report: Callable[[PruneResult, float], dict] | None = None,
) -> tuple[PruneResult, Path]:
    """Prune a safetensors folder block by block from disk into the export folder `out`.

    `report(result, seconds)` builds `sparsity.json` (default: `build_report` with the durations); on a
    cancel or an error nothing is left at `out` (the partial folder is removed)."""
    plan.validate()
    job = as_job(job)
    loaded = model if isinstance(model, LoadedModel) else open_streaming(model, job=job)
    if loaded.path is None or not loaded.path.is_dir():
        raise UserError("streaming needs a model folder with safetensors weights; this model was not opened from one.")
    started = time.perf_counter()
    reader = TensorReader(loaded.path)
    with atomic_folder(out, overwrite, job) as folder:
        export = StreamingExport(loaded, reader, folder)
        job.phase("export", 0, 2, "embeddings and head")
        export.write_rest()
        result = prune_blocks(StreamedBlocks(loaded, reader), calib, plan, job, summarize=summarize,
                              sink=export, memory_budget=memory_budget, compute_dtype=compute_dtype)
        job.phase("export", 1, 2, "moving into place")
        seconds = time.perf_counter() - started
        made = report(result, seconds) if report is not None else build_report(
            loaded, result, calib, durations={"prune": result.seconds, "total": seconds})
        export.finish(made, calib)
    path = Path(out).expanduser().resolve()
    job.phase("export", 2, 2, str(path))
    return result, path
