"""A model that does not fit in memory, opened as a skeleton whose blocks are read from disk one at a time.

The model is built on the meta device (no weights). What runs before the first block (embeddings) is
read once; each decoder block's tensors are read from the safetensors files when its turn comes
(`StreamedBlocks`, a block source of `core.pruning.pipeline`) and dropped afterwards. Host memory holds
about one block. `core.export.streaming` writes the pruned blocks into the export as they finish.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..events import Job, as_job
from ..formats.safetensors_reader import TensorReader
from .architectures import Layout, find_layout, weight_matrix
from .loaded import LoadedModel
from .open import read_config, refuse_remote_code
from .tokenizer import load_tokenizer


def open_streaming(folder: str | Path, *, trust_remote_code: bool = False, job: Job | None = None) -> LoadedModel:
    """A `LoadedModel` whose model is a meta-device skeleton of the folder's model (weights stay on disk)."""
    job = as_job(job)
    folder = Path(folder).expanduser()
    job.phase("open model (streaming)", 0, 1, str(folder))
    model, layout, reader = open_skeleton(folder, trust_remote_code)
    missing = [f"{layout.blocks_path}.0.{n}" for n, _ in layout.blocks[0].named_parameters()
               if f"{layout.blocks_path}.0.{n}" not in reader]
    if missing:
        raise UserError(f"{folder}: the weights do not use the names transformers gives this model ({missing[0]} "
                        "is missing), so it cannot be streamed: prune it in memory instead.")
    tokenizer = load_tokenizer(folder, trust_remote_code, strict=True)
    job.phase("open model (streaming)", 1, 1, str(folder))
    return LoadedModel(model, tokenizer, str(folder), "folder", folder, layout)


def open_skeleton(folder: Path, trust_remote_code: bool = False) -> tuple[nn.Module, Layout, TensorReader]:
    """The folder's model built on the meta device in its stored dtype, its layout, and its tensors' reader:
    shapes and sizes without reading a weight."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: streaming needs a Hugging Face model folder with safetensors weights.")
    if not trust_remote_code:
        refuse_remote_code(folder, read_config(folder))
    reader = TensorReader(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=_stored_dtype(reader), trust_remote_code=trust_remote_code)
    model.eval()
    return model, find_layout(model), reader


def _stored_dtype(reader: TensorReader) -> torch.dtype:
    floating = [reader.dtype(n) for n in reader.names() if reader.dtype(n).is_floating_point]
    return max(set(floating), key=floating.count) if floating else torch.float32


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


class StreamedBlocks:
    """A block source whose blocks are materialised from the safetensors files for their turn only."""

    restores = False      # nothing in memory changes: the source files are only read

    def __init__(self, loaded: LoadedModel, reader: TensorReader):
        self.model, self.layout, self.reader = loaded.model, loaded.layout, reader
        first = f"{self.layout.blocks_path}.0.{next(self.layout.blocks[0].named_parameters())[0]}"
        self.storage_dtype = reader.dtype(first)
        self._outside: list[str] = []
        self._loaded: set[int] = set()

    def prepare(self, device):
        """Read what runs before the first block (embeddings and the like); the output head is never needed."""
        head = _module_name(self.model, self.model.get_output_embeddings())
        for name, param in self.model.named_parameters():
            if name.startswith(self.layout.blocks_path + ".") or (head and name.startswith(head + ".")):
                continue
            if name in self.reader:
                _set_tensor(self.model, name, self.reader.get(name).to(device))
                self._outside.append(name)

    def remember(self, full_name, layer):
        """Nothing to keep: the dense weights stay in the source files."""

    def dense_matrix(self, full_name, layer):
        return weight_matrix(layer, self.reader.get(full_name + ".weight"))

    def restore(self):
        """Nothing to undo: the source files are only read, the export is removed by its writer."""

    def release_outside(self):
        for name in self._outside:
            _set_tensor(self.model, name, torch.empty_like(self.model.get_parameter(name), device="meta"))
        self._outside.clear()

    def load(self, index, device, dtype):
        block = self.layout.blocks[index]
        prefix = f"{self.layout.blocks_path}.{index}."
        for name, param in list(block.named_parameters()):
            value = self.reader.get(prefix + name)
            _set_tensor(block, name, value.to(device, dtype if value.is_floating_point() else value.dtype))
        for name, buf in list(block.named_buffers()):
            value = self.reader.get(prefix + name) if prefix + name in self.reader else buf
            _set_tensor(block, name, value.to(device))
        self._loaded.add(index)
        return block

    def unload(self, index, block):
        for name, param in list(block.named_parameters()):
            _set_tensor(block, name, torch.empty_like(param, device="meta"))
        self._loaded.discard(index)

    def close(self):
        for index in list(self._loaded):
            self.unload(index, self.layout.blocks[index])
        self.release_outside()


def _module_name(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((n for n, m in model.named_modules() if m is module), None)
