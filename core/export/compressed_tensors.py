"""Write a quantized model as a compressed-tensors folder, which vLLM, SGLang and transformers load.

Every quantized linear layer is stored `pack-quantized`: its integer codes packed into int32 words (eight
int4 or four int8 codes a word), its scales in the model dtype and, on an asymmetric grid, its zero points
packed the same way along the output dimension. int8 is packed too: that is the format compressed-tensors
itself infers for weight-only int8 and the only weight-only int8 layout vLLM runs (`int-quantized` is its
W8A8 format), so a run that mixes int4 and int8 still has one format. Layers sharing bits, symmetry and
group size form a config group that names them exactly, so nothing else matches: embeddings, lm_head and
skipped layers stay in the model dtype. The codes come back exactly from the dequantized weights in memory
(`QuantizedLayer.codes`), so the folder loads to the very model the engine evaluated. The package is
imported inside the functions: the engine imports and runs without it.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from torch import nn

from ..data.calibration import CalibrationSet, save_calibration
from ..errors import UserError
from ..events import Job, as_job
from ..formats.names import CALIBRATION
from ..quantization.quantized import QuantizedLayer
from .destination import atomic_folder
from .report import write_report

FORMAT = "pack-quantized"
INSTALL_HINT = "pip install compressed-tensors (or the project extra: pip install -e '.[serve]')"


def available() -> bool:
    """Whether compressed-tensors can be imported here."""
    try:
        require_compressed_tensors()
    except UserError:
        return False
    return True


def require_compressed_tensors() -> None:
    try:
        import compressed_tensors
        from compressed_tensors.compressors.base import BaseCompressor
    except ImportError as error:
        raise UserError(f"the compressed-tensors export needs the compressed-tensors package ({error}): "
                        f"{INSTALL_HINT}; or export another format (--format hf or gguf).") from None
    if not isinstance(inspect.getattr_static(BaseCompressor, "compress", None), classmethod):
        raise UserError(f"compressed-tensors {compressed_tensors.__version__} is too old for this export "
                        "(it needs 0.20 or newer): pip install -U compressed-tensors.")


def check_compressed(loaded, quantized: dict[str, QuantizedLayer]) -> None:
    """Refuse, before any work, records this format cannot store."""
    if not quantized:
        raise UserError("compressed-tensors stores quantized weights and no layer of this model is quantized: "
                        "quantize it (--quantize int4 or int8), or export the ordinary folder (--format hf).")
    for name, record in quantized.items():
        layer = loaded.model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise UserError(f"{name} is a {type(layer).__name__}, which compressed-tensors cannot store "
                            "(it quantizes nn.Linear layers only): export this model as gguf or hf instead.")
        if not 1 <= record.bits <= 8:
            raise UserError(f"{name}: {record.bits}-bit codes do not fit compressed-tensors' int32 packing.")
        if layer.in_features % record.group_size:
            raise UserError(f"{name}: group size {record.group_size} does not divide its "
                            f"{layer.in_features} inputs, which compressed-tensors requires.")


def export_compressed(loaded, out, report: dict, quantized: dict[str, QuantizedLayer],
                      calib: CalibrationSet | None = None, *, overwrite: bool = False,
                      job: Job | None = None) -> Path:
    """Write model (compressed), tokenizer, `sparsity.json` and the calibration windows into `out`,
    atomically; `quantized`: full module name -> its record. `loaded.model` is left as it is."""
    job = as_job(job)
    require_compressed_tensors()
    check_compressed(loaded, quantized)
    from compressed_tensors.compressors import ModelCompressor

    config = build_quantization_config(quantized)
    caveat = transformers_caveat(config)
    if caveat:
        job.message(*caveat)
    steps = len(quantized) + 2
    with atomic_folder(out, overwrite, job) as tmp:
        state = compressed_state_dict(loaded.model, quantized, config, job, steps)
        job.phase("export", steps - 2, steps, "weights")
        loaded.model.save_pretrained(tmp, state_dict=state)   # config, generation config; tied weights once
        ModelCompressor(quantization_config=config).update_config(str(tmp))
        job.check()
        job.phase("export", steps - 1, steps, "tokenizer")
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        if calib is not None:
            save_calibration(calib, tmp / CALIBRATION)
        write_report(tmp, {**report, "storage": _storage(quantized)})
        job.check()
    job.phase("export", steps, steps, str(Path(out).expanduser().resolve()))
    return Path(out).expanduser().resolve()


def build_quantization_config(quantized: dict[str, QuantizedLayer]):
    """compressed-tensors' `QuantizationConfig`: one config group per (bits, symmetry, group size)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus

    groups: dict[tuple, list[str]] = {}
    for name, record in quantized.items():
        groups.setdefault(_group_key(record), []).append(name)
    schemes = {f"group_{i}": QuantizationScheme(targets=names, weights=_weight_args(*key), format=FORMAT)
               for i, (key, names) in enumerate(sorted(groups.items(), key=lambda kv: _sortable(kv[0])))}
    return QuantizationConfig(config_groups=schemes, format=FORMAT, ignore=[],
                              quantization_status=QuantizationStatus.COMPRESSED)


def transformers_caveat(config) -> tuple[str, str] | None:
    """(message, level) on what transformers (5.x, compressed-tensors 0.20) cannot load; vLLM loads it all."""
    if all(scheme.weights.symmetric for scheme in config.config_groups.values()):
        return None
    if len(config.config_groups) > 1:
        return ("transformers cannot load asymmetric compressed-tensors folders with several config groups "
                "(group sizes); vLLM can. Choose one group size, or symmetric quantization, for transformers.",
                "warning")
    return ("transformers loads asymmetric compressed-tensors folders only dequantized: from_pretrained(folder, "
            "quantization_config=CompressedTensorsConfig(dequantize=True)); vLLM loads them as they are.", "info")


def compressed_state_dict(model: nn.Module, quantized: dict[str, QuantizedLayer], config,
                          job: Job | None = None, steps: int = 0) -> dict[str, torch.Tensor]:
    """The model's state dict with each quantized layer's `weight` replaced by its compressed tensors."""
    job = as_job(job)
    scheme_of = {name: scheme for scheme in config.config_groups.values() for name in scheme.targets}
    state = dict(model.state_dict())
    for i, (name, record) in enumerate(quantized.items()):
        job.phase("export", i, steps or len(quantized), name)
        weight = state.pop(f"{name}.weight")
        for key, tensor in compress_layer(weight, record, scheme_of[name]).items():
            state[f"{name}.{key}"] = tensor
        job.check()
    return state


def compress_layer(weight: torch.Tensor, record: QuantizedLayer, scheme) -> dict[str, torch.Tensor]:
    """weight_packed, weight_scale, weight_shape (and weight_zero_point) of one layer, by compressed-tensors."""
    from compressed_tensors.compressors.base import BaseCompressor

    local = {"weight": weight.detach().cpu().float(), "weight_scale": record.scale}
    if record.zero is not None:
        local["weight_zero_point"] = record.zero.to(torch.int8)    # [out, groups] codes, as `quantize` expects
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    return compressor.compress(local, scheme)


def compressed_bytes(loaded, quantized: dict[str, QuantizedLayer]) -> int:
    """The bytes of the tensors `export_compressed` would write (file headers aside), without writing."""
    total = sum(t.numel() * t.element_size() for t in _unique_tensors(loaded.model.state_dict()))
    for name, record in quantized.items():
        weight = loaded.model.get_submodule(name).weight
        rows, cols = weight.shape
        total += packed_layer_bytes(rows, cols, record) - weight.numel() * weight.element_size()
    return total


def packed_layer_bytes(rows: int, cols: int, record: QuantizedLayer) -> int:
    """Packed codes (int32 words along the inputs), scales, packed zero points and the 2 int64 shape."""
    codes = rows * math.ceil(cols * record.bits / 32) * 4
    scales = record.scale.numel() * record.scale.element_size()
    zeros = 0 if record.zero is None else math.ceil(rows * record.bits / 32) * record.scale.shape[1] * 4
    return codes + scales + zeros + 2 * 8


def _group_key(record: QuantizedLayer) -> tuple[int, bool, int | None]:
    return record.bits, record.symmetric, None if record.per_channel else record.group_size


def _sortable(key: tuple) -> tuple:
    bits, symmetric, group_size = key
    return bits, not symmetric, group_size or 0


def _weight_args(bits: int, symmetric: bool, group_size: int | None):
    from compressed_tensors.quantization import QuantizationArgs

    strategy = "channel" if group_size is None else "group"
    return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=group_size, dynamic=False)


def _unique_tensors(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The state dict's tensors, tied ones (sharing storage) once, as safetensors writes them."""
    seen, unique = set(), []
    for tensor in state.values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.device.type == "meta" or key not in seen:
            seen.add(key)
            unique.append(tensor)
    return unique


def _storage(quantized: dict[str, QuantizedLayer]) -> str:
    kinds = sorted({f"int{r.bits} {'per channel' if r.per_channel else f'group {r.group_size}'}"
                    f"{'' if r.symmetric else ' asymmetric'}" for r in quantized.values()})
    return (f"compressed-tensors {FORMAT}: {len(quantized)} linear layers ({', '.join(kinds)}); "
            "pruned weights are zero codes, every other tensor in the model dtype")
