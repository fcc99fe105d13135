"""The compact 2:4 checkpoint: each 2:4 weight stored as its kept values plus packed 2-bit positions.

A weight [out, in] that keeps at most 2 of every 4 consecutive inputs is stored as
`values` [out, in/2] (same dtype; the two kept entries of each group, in order) and
`positions` uint8 [out, ceil(in/8)]: the two 2-bit positions of a group make a nibble, two groups a
byte (4 positions per byte). For fp16 that is 1/2 + 1/16 = 9/16 (56%) of the dense bytes.

A compact folder is a Hugging Face export whose weight files are renamed `*.compact.safetensors`, so
plain `transformers` refuses it loudly (no weights found) instead of loading garbage; `unpack_folder`
gives back the ordinary folder with the same weights, and `core.models.open_model` reads it directly.
Kept values come back bit for bit; a pruned entry comes back as +0.0 (a stored -0.0 loses its sign).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .events import CancelToken, EventSink, Phase, ignore
from .masks import Pattern, follows_pattern

FORMAT = "compression-studio/compact-2:4"
VERSION = 1
SUFFIX = ".compact.safetensors"
INDEX = "model.safetensors.index.json"
COMPACT_INDEX = "model.compact.safetensors.index.json"
VALUES, POSITIONS = "::values", "::positions"
TWO_FOUR = Pattern(2, 4)
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# ---------------------------------------------------------------- one tensor


def packable(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and follows_pattern(weight, TWO_FOUR)


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 2:4 weight [out, in] into kept values [out, in/2] and packed positions uint8 [out, ceil(in/8)]."""
    if not packable(weight):
        raise ValueError(f"weight {tuple(weight.shape)} does not follow 2:4 along its last dimension")
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    # Prefer non-zero values, then entries whose bits are non-zero (a -0.0), then the lowest position.
    bits = groups.contiguous().view(_BITS[weight.element_size()])
    score = (groups != 0).to(torch.int8) * 2 + (bits != 0).to(torch.int8)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :2]
    kept = torch.sort(order, dim=-1).values                              # [rows, groups, 2], p0 < p1
    values = torch.gather(groups, 2, kept).reshape(rows, cols // 2)
    return values.contiguous(), _pack_positions(kept)


def unpack(values: torch.Tensor, positions: torch.Tensor, cols: int) -> torch.Tensor:
    """The dense weight [out, cols] from `pack`'s output."""
    rows = values.shape[0]
    kept = unpack_positions(positions, cols)
    dense = torch.zeros(rows, cols // 4, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(2, kept, values.reshape(rows, cols // 4, 2))
    return dense.reshape(rows, cols)


def _pack_positions(kept: torch.Tensor) -> torch.Tensor:
    rows, groups, _ = kept.shape
    nibbles = (kept[..., 0] | (kept[..., 1] << 2)).to(torch.uint8)      # [rows, groups]
    if groups % 2:
        nibbles = torch.cat([nibbles, torch.zeros(rows, 1, dtype=torch.uint8, device=kept.device)], dim=1)
    pairs = nibbles.reshape(rows, -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()


def unpack_positions(positions: torch.Tensor, cols: int) -> torch.Tensor:
    """Kept positions int64 [out, cols/4, 2] (ascending within each group) from the packed bytes."""
    rows = positions.shape[0]
    nibbles = torch.stack([positions & 0x0F, positions >> 4], dim=-1).reshape(rows, -1)[:, : cols // 4].long()
    return torch.stack([nibbles & 0b11, nibbles >> 2], dim=-1)


def compact_bytes(shape: tuple[int, int], dtype: torch.dtype) -> int:
    rows, cols = shape
    return rows * (cols // 2) * torch.empty(0, dtype=dtype).element_size() + rows * ((cols + 7) // 8)


# ---------------------------------------------------------------- CUTLASS without a dense detour


def cutlass_meta(positions: torch.Tensor, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """CUTLASS's reordered metadata for a 2:4 fp16/bf16 weight, computed from our packed positions.

    Same encoding and reordering as `torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass`:
    each group's nibble is (first kept position) | (second kept position) << 2, four nibbles per int16.
    With our `values` as CUTLASS's `packed`, this is everything its kernel needs.
    """
    from torch.sparse._semi_structured_conversions import _calculate_meta_reordering_scatter_offsets

    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"CUTLASS metadata from positions is implemented for fp16/bf16, not {dtype}")
    rows = positions.shape[0]
    if rows % 32 or cols % 64:
        raise ValueError(f"CUTLASS needs rows a multiple of 32 and columns of 64, got {rows}x{cols}")
    kept = unpack_positions(positions, cols)
    meta_4 = kept[..., 0] | (kept[..., 1] << 2)
    meta_ncols = cols // 16
    meta_n = meta_4.view(-1, meta_ncols, 4).to(torch.int16)
    meta = meta_n[:, :, 0] | (meta_n[:, :, 1] << 4) | (meta_n[:, :, 2] << 8) | (meta_n[:, :, 3] << 12)
    reordered = meta.new_empty((rows * meta_ncols,))
    offsets = _calculate_meta_reordering_scatter_offsets(rows, meta_ncols, torch.int16, positions.device)
    reordered.scatter_(0, offsets, meta.view(-1))
    return reordered.view(rows, meta_ncols)


def cutlass_from_compact(values: torch.Tensor, positions: torch.Tensor, cols: int):
    """A `SparseSemiStructuredTensorCUTLASS` built from compact storage on the values' (CUDA) device.

    cuSPARSELt has no such route: its packed layout is opaque and only `torch._cslt_compress(dense)` makes it.
    """
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    meta = cutlass_meta(positions, cols, values.dtype).to(values.device)
    shape = torch.Size((values.shape[0], cols))
    return SparseSemiStructuredTensorCUTLASS(shape, values.contiguous(), meta, None, None, None)


# ---------------------------------------------------------------- folders


@dataclass
class CompactSummary:
    out: Path
    layers: int                 # weights stored compactly
    dense_bytes: int            # bytes of every weight file in the dense folder
    compact_bytes: int          # bytes of every weight file in the compact folder

    @property
    def ratio(self) -> float:
        return self.compact_bytes / self.dense_bytes if self.dense_bytes else 0.0


def is_compact(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob(f"*{SUFFIX}"))


def _weight_files(folder: Path, compact: bool) -> list[Path]:
    files = sorted(folder.glob(f"*{SUFFIX}")) if compact else sorted(
        p for p in folder.glob("*.safetensors") if not p.name.endswith(SUFFIX) and p.name != "calibration.safetensors")
    return files


def _candidates(folder: Path) -> set[str] | None:
    """Weight names the export says were pruned (None: no report, try every 2-D tensor)."""
    report = folder / "sparsity.json"
    if not report.is_file():
        return None
    layers = (json.loads(report.read_text()).get("pruning") or {}).get("layers") or []
    return {f"{layer['name']}.weight" for layer in layers} or None


def write_compact(dense_folder: str | Path, out: str | Path, *, overwrite: bool = False,
                  on_event: EventSink = ignore, cancel: CancelToken | None = None) -> CompactSummary:
    """Rewrite an exported dense folder with every 2:4 weight in compact form, atomically."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .export import REPORT, atomic_folder

    dense_folder, cancel = Path(dense_folder), cancel or CancelToken()
    files = _weight_files(dense_folder, compact=False)
    if not (dense_folder / "config.json").is_file() or not files:
        raise UserError(f"{dense_folder} is not an exported model folder (config.json and *.safetensors needed).")
    wanted, layers, dense_bytes, compact_bytes_total = _candidates(dense_folder), {}, 0, 0
    out = Path(out).expanduser().resolve()
    with atomic_folder(out, overwrite) as tmp:
        _copy_others(dense_folder, tmp, skip={f.name for f in files} | {INDEX, REPORT})
        for i, file in enumerate(files):
            on_event(Phase("compact", i, len(files), file.name))
            tensors = {}
            with safe_open(str(file), "pt") as reader:
                for name in reader.keys():
                    cancel.check()
                    tensor = reader.get_tensor(name)
                    layout = _compact_layout(name, tensor, wanted)
                    if layout is None:
                        tensors[name] = tensor
                        continue
                    matrix = tensor.t() if layout else tensor
                    tensors[name + VALUES], tensors[name + POSITIONS] = pack(matrix)
                    layers[name] = {"shape": list(tensor.shape), "transposed": layout}
            target = tmp / (file.name[: -len(".safetensors")] + SUFFIX)
            save_file(tensors, str(target), metadata={"format": FORMAT, "version": str(VERSION),
                                                      "layers": json.dumps({k: v for k, v in layers.items()
                                                                            if k + VALUES in tensors})})
            dense_bytes += file.stat().st_size
            compact_bytes_total += target.stat().st_size
        _rename_index(dense_folder / INDEX, tmp / COMPACT_INDEX, to_compact=True)
        summary = CompactSummary(out, len(layers), dense_bytes, compact_bytes_total)
        _write_report(dense_folder, tmp, summary)
    on_event(Phase("compact", len(files), len(files), str(out)))
    return summary


def _compact_layout(name: str, tensor: torch.Tensor, wanted: set[str] | None) -> bool | None:
    """None: keep dense; False: 2:4 along the last dimension; True: along the first (GPT-2 Conv1D)."""
    if not tensor.is_floating_point() or tensor.dim() != 2 or (wanted is not None and name not in wanted):
        return None
    if packable(tensor):
        return False
    if tensor.shape[0] % 4 == 0 and packable(tensor.t()):
        return True
    return None


def _copy_others(src: Path, dst: Path, skip: set[str]) -> None:
    for item in src.iterdir():
        if item.name in skip or item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)


def _rename_index(src: Path, dst: Path, to_compact: bool) -> None:
    if not src.is_file():
        return
    index = json.loads(src.read_text())
    old, new = (".safetensors", SUFFIX) if to_compact else (SUFFIX, ".safetensors")
    index["weight_map"] = {k: v[: -len(old)] + new for k, v in index.get("weight_map", {}).items()}
    dst.write_text(json.dumps(index, indent=2) + "\n")


def _write_report(src: Path, dst: Path, summary: CompactSummary) -> None:
    report_file = src / "sparsity.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report["storage"] = {
        "format": "compact-2:4", "version": VERSION, "compact_layers": summary.layers,
        "bytes": {"dense": summary.dense_bytes, "compact": summary.compact_bytes},
        "note": ("2:4 weights stored as kept values [out, in/2] plus 2-bit positions, 4 per byte; "
                 "restore the ordinary folder with `compression-studio unpack DIR --out DIR2`"),
        "dense_storage": report.get("storage"),
    }
    (dst / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n")


def load_state(folder: str | Path, on_event: EventSink = ignore) -> dict[str, torch.Tensor]:
    """Every weight of a compact folder, dense again, by the names `save_pretrained` wrote."""
    files, state = _weight_files(Path(folder), compact=True), {}
    for i, file in enumerate(files):
        on_event(Phase("unpack", i, len(files), file.name))
        state.update(read_compact_file(file))
    on_event(Phase("unpack", len(files), len(files), str(folder)))
    return state


def read_compact_file(file: Path) -> dict[str, torch.Tensor]:
    """One `*.compact.safetensors` file as dense tensors."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as reader:
        meta = reader.metadata() or {}
        if meta.get("format") != FORMAT:
            raise UserError(f"{file} is not a compact 2:4 file written by this tool (format {meta.get('format')!r}).")
        if int(meta.get("version", 0)) > VERSION:
            raise UserError(f"{file} uses compact format version {meta['version']}; update compression-studio to read it.")
        layers, state = json.loads(meta.get("layers", "{}")), {}
        for name in reader.keys():
            if name.endswith(POSITIONS):
                continue
            if not name.endswith(VALUES):
                state[name] = reader.get_tensor(name)
                continue
            base = name[: -len(VALUES)]
            info = layers[base]
            cols = info["shape"][0] if info["transposed"] else info["shape"][1]
            dense = unpack(reader.get_tensor(name), reader.get_tensor(base + POSITIONS), cols)
            state[base] = dense.t().contiguous() if info["transposed"] else dense
    return state


def unpack_folder(compact_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                  on_event: EventSink = ignore) -> Path:
    """Write the ordinary dense Hugging Face folder a compact folder was made from, atomically."""
    from safetensors.torch import save_file

    from .export import atomic_folder

    compact_dir = Path(compact_dir)
    if not is_compact(compact_dir):
        raise UserError(f"{compact_dir} is not a compact 2:4 folder (no *{SUFFIX} files): nothing to unpack.")
    with atomic_folder(out_dir, overwrite) as tmp:
        files = _weight_files(compact_dir, compact=True)
        _copy_others(compact_dir, tmp, skip={f.name for f in files} | {COMPACT_INDEX, "sparsity.json"})
        for file in files:
            state = read_compact_file(file)
            save_file(state, str(tmp / (file.name[: -len(SUFFIX)] + ".safetensors")), metadata={"format": "pt"})
        _rename_index(compact_dir / COMPACT_INDEX, tmp / INDEX, to_compact=False)
        _restore_report(compact_dir, tmp)
    out = Path(out_dir).expanduser().resolve()
    on_event(Phase("unpack", 1, 1, str(out)))
    return out


def _restore_report(src: Path, dst: Path) -> None:
    report_file = src / "sparsity.json"
    if not report_file.is_file():
        return
    report = json.loads(report_file.read_text())
    storage = report.pop("storage", None) or {}
    if storage.get("dense_storage") is not None:
        report["storage"] = storage["dense_storage"]
    (dst / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n")


def _skip_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


def load_model(folder: str | Path, dtype: torch.dtype, trust_remote_code: bool = False,
               on_event: EventSink = ignore):
    """(model, tokenizer) from a compact folder, without writing a dense copy anywhere."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with _skip_init():         # every weight is overwritten below: random initialisation is wasted time
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()        # skipped with the initialisation
    state = load_state(folder, on_event)
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[name]) for name in state if name in params}
    untied = [name for name in missing if name not in params or id(params[name]) not in loaded]
    if unexpected or untied:
        raise UserError(f"{folder}: the compact weights do not match the model in config.json "
                        f"(missing {untied[:3]}, unexpected {list(unexpected)[:3]}).")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception:  # as core.models: opens for inspection and benchmarks; calibration says what is missing
        tokenizer = None
    return model, tokenizer


def export_compact(loaded, out: str | Path, report: dict, calib=None, *, overwrite: bool = False,
                   on_event: EventSink = ignore) -> CompactSummary:
    """The ordinary export (`core.export.write_export`) written to a scratch folder, then compacted into `out`."""
    from .export import check_output, write_export

    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.dense-", dir=out.parent))
    try:
        dense = write_export(loaded, scratch / "dense", report, calib, on_event=on_event)
        return write_compact(dense, out, overwrite=overwrite, on_event=on_event)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def semi_structured_weights(folder: str | Path, model, device: torch.device | str,
                            backend: str = "auto") -> dict[str, str]:
    """Put 2:4 semi-structured weights from a compact folder into `model` (already on a CUDA `device`).

    CUTLASS tensors are built straight from the stored values and positions (no dense weight at all);
    cuSPARSELt's packed layout is opaque, so its tensors go through one dense weight on the device at a time.
    Returns layer name -> "" when converted, else why it stays as it is (checked by `core.sparse_rules`).
    """
    from safetensors import safe_open
    from torch import nn

    from . import sparse_rules as rules

    device = torch.device(device)
    capability = rules.device_capability(device) if device.type == "cuda" else None
    available = rules.available_backends(capability)
    if backend == "auto":
        backend = next((b for b in (rules.CUSPARSELT, rules.CUTLASS) if not available[b]), rules.CUSPARSELT)
    outcome = {}
    for file in _weight_files(Path(folder), compact=True):
        with safe_open(str(file), "pt") as reader:
            layers = json.loads((reader.metadata() or {}).get("layers", "{}"))
            for base, info in layers.items():
                name = base.removesuffix(".weight")
                layer = model.get_submodule(name)
                ok, reason = (False, available[backend]) if available[backend] else rules.check(
                    tuple(info["shape"]), layer.weight.dtype, backend, capability)
                if type(layer) is not nn.Linear or info["transposed"]:
                    ok, reason = False, "not an nn.Linear layer"
                if not ok or reason:        # padding inside a model is not done: the layer stays dense
                    outcome[name] = reason or "needs padding"
                    continue
                values = reader.get_tensor(base + VALUES).to(device, layer.weight.dtype)
                positions = reader.get_tensor(base + POSITIONS)
                cols = info["shape"][1]
                if backend == rules.CUTLASS:
                    sparse = cutlass_from_compact(values, positions, cols)
                else:
                    sparse = torch.sparse.SparseSemiStructuredTensorCUSPARSELT.from_dense(
                        unpack(values, positions.to(device), cols))
                layer.weight = nn.Parameter(sparse, requires_grad=False)
                outcome[name] = ""
    return outcome
