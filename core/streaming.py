"""Prune a safetensors model that does not fit in memory, writing the export while pruning proceeds.

The model is built as a skeleton on the meta device (no weights). What runs before the first block
(embeddings) is read once; each decoder block's tensors are read from the safetensors files when its
turn comes, pruned by the one block loop of `core.pipeline`, written to the export as a shard of its own,
and dropped. The output head and final norm are copied file to file, never run. Host memory holds about
one block, the calibration activations (or one batch of them, when they spill to disk) and the embeddings.

The export is an ordinary sharded Hugging Face folder (`model.safetensors.index.json`), written into a
hidden temporary folder and renamed into place at the end, with `sparsity.json` and
`calibration.safetensors` like `core.export.write_export`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from .architectures import find_layout, weight_matrix
from .calibration import CalibrationSet, save_calibration
from .errors import UserError
from .events import CancelToken, EventSink, Phase, ignore
from .export import CALIBRATION, atomic_folder, build_report, write_report
from .models import LoadedModel
from .pipeline import PruneResult, prune_blocks
from .plan import PrunePlan

INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
REST_SHARD_BYTES = 1 << 30     # embeddings, norm and head are copied in shards of at most about this size


class TensorReader:
    """The tensors of a folder's safetensors files, by name, each read with one plain `read` into its own buffer.

    The files are not memory-mapped (as `safetensors.safe_open` does): every page of a mapping that has
    been read stays in the process's resident set until unmapped, so streaming a 2 GB model through
    mappings would show a 2 GB peak RSS although only one block is ever in use. The layout read here is
    the documented safetensors one: 8 bytes of header length, a JSON header, then the raw data.
    """

    def __init__(self, folder: Path):
        index = folder / INDEX
        if index.is_file():
            files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = sorted(p for p in folder.glob("*.safetensors") if p.name != CALIBRATION)
        if not files:
            raise UserError(f"{folder} has no .safetensors weights: streaming reads safetensors only; "
                            "prune this model in memory instead.")
        self._entries: dict[str, tuple[Path, int, int, torch.dtype, list[int]]] = {}
        for file in files:
            self._entries.update(_read_header(file))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> torch.Tensor:
        file, start, end, dtype, shape = self._entries[name]
        raw = torch.empty(end - start, dtype=torch.uint8)
        with open(file, "rb", buffering=0) as f:
            f.seek(start)
            view, done = memoryview(raw.numpy()), 0
            while done < len(view):
                count = f.readinto(view[done:])
                if not count:
                    raise UserError(f"{file.name} is truncated: {name} ends past the end of the file.")
                done += count
        return raw.view(dtype).reshape(shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name][3]

    def nbytes(self, name: str) -> int:
        _, start, end, _, _ = self._entries[name]
        return end - start


def _read_header(file: Path) -> dict:
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise UserError(f"{file.name} is not a valid safetensors file (its header is unreadable).") from None
    base = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise UserError(f"{file.name}: tensor {name} has dtype {info['dtype']}, which streaming does not read.")
        start, end = info["data_offsets"]
        entries[name] = (file, base + start, base + end, _DTYPES[info["dtype"]], info["shape"])
    return entries


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def open_streaming(folder: str | Path, *, trust_remote_code: bool = False, on_event: EventSink = ignore) -> LoadedModel:
    """A `LoadedModel` whose model is a meta-device skeleton of the folder's model (weights stay on disk)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: streaming needs a Hugging Face model folder with safetensors weights.")
    on_event(Phase("open model (streaming)", 0, 1, str(folder)))
    reader = TensorReader(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    dtype = _stored_dtype(reader)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    layout = find_layout(model)
    missing = [f"{layout.blocks_path}.0.{n}" for n, _ in layout.blocks[0].named_parameters()
               if f"{layout.blocks_path}.0.{n}" not in reader]
    if missing:
        raise UserError(f"{folder}: the weights do not use the names transformers gives this model ({missing[0]} "
                        "is missing), so it cannot be streamed: prune it in memory instead.")
    tokenizer = _tokenizer(folder, trust_remote_code)
    on_event(Phase("open model (streaming)", 1, 1, str(folder)))
    return LoadedModel(model, tokenizer, str(folder), "folder", folder, layout)


def _stored_dtype(reader: TensorReader) -> torch.dtype:
    floating = [reader.dtype(n) for n in reader.names() if reader.dtype(n).is_floating_point]
    return max(set(floating), key=floating.count) if floating else torch.float32


def _tokenizer(folder: Path, trust_remote_code: bool):
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UserError(f"could not read the tokenizer in {folder}: {str(exc).strip().splitlines()[0]}") from None


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
        from safetensors.torch import save_file

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
    *,
    overwrite: bool = False,
    on_event: EventSink = ignore,
    cancel: CancelToken | None = None,
    with_summaries: bool = False,
    memory_budget: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[PruneResult, Path]:
    """Prune a safetensors folder block by block from disk into the export folder `out`.

    On a cancel or an error nothing is left at `out` (the partial folder is removed)."""
    plan.validate()
    loaded = model if isinstance(model, LoadedModel) else open_streaming(model, on_event=on_event)
    if loaded.path is None or not loaded.path.is_dir():
        raise UserError("streaming needs a model folder with safetensors weights; this model was not opened from one.")
    started = time.perf_counter()
    reader = TensorReader(loaded.path)
    with atomic_folder(out, overwrite) as folder:
        export = StreamingExport(loaded, reader, folder)
        on_event(Phase("export", 0, 2, "embeddings and head"))
        export.write_rest()
        result = prune_blocks(StreamedBlocks(loaded, reader), calib, plan, on_event, cancel, with_summaries,
                              sink=export, memory_budget=memory_budget, compute_dtype=compute_dtype)
        on_event(Phase("export", 1, 2, "moving into place"))
        report = build_report(loaded, result, calib, durations={"prune": result.seconds,
                                                                 "total": time.perf_counter() - started})
        export.finish(report, calib)
    path = Path(out).expanduser().resolve()
    on_event(Phase("export", 2, 2, str(path)))
    return result, path
