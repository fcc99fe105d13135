"""Write a model as one GGUF file, the format llama.cpp, LM Studio and Ollama run directly.

The file is what llama.cpp's own converter would write for the model, and exactly what transformers'
GGUF reader turns back into the same model: architecture metadata, the byte-level BPE tokenizer
(tokens, types, merges, special ids, chat template), tensors under llama.cpp's names, and Llama's
query/key rows interleaved the way llama.cpp's rotary embedding expects them.

Norms and other 1-D tensors stay F32; matrices are F16, Q8_0 or Q4_0. All three store a zero as an
exact zero, so pruned weights stay pruned in the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import prod
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as GGML
from gguf import GGUFValueType as Value

from ..errors import UserError
from ..events import Job, as_job
from .destination import atomic_folder
from .report import write_report

GGUF_TYPES = ("f16", "q8_0", "q4_0")

_MATRIX_TYPE = {"f16": GGML.F16, "q8_0": GGML.Q8_0, "q4_0": GGML.Q4_0}
_FILE_TYPE = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
# llama.cpp converts Mistral as a Llama (same graph, same Q/K permutation); transformers reads it back so.
_ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
_PERMUTED_ARCHS = {gguf.MODEL_ARCH.LLAMA}
_BLOCK = 32  # Q8_0 and Q4_0 quantize rows in blocks of 32 weights
_ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT


@dataclass(frozen=True)
class _Tensor:
    name: str           # llama.cpp's name, e.g. "blk.0.attn_q.weight"
    source: str         # the state-dict key it comes from
    shape: tuple[int, ...]
    ggml_type: GGML

    @property
    def nbytes(self) -> int:
        block, block_bytes = gguf.GGML_QUANT_SIZES[self.ggml_type]
        return prod(self.shape) // block * block_bytes


def check_gguf(loaded, qtype: str) -> None:
    """Refuse, before any work, what this export cannot write faithfully."""
    if qtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {qtype!r}: choose one of {', '.join(GGUF_TYPES)}.")
    config = loaded.model.config
    model_type = getattr(config, "model_type", "?")
    if model_type not in _ARCHS:
        raise UserError(f"GGUF export supports Llama, Mistral and Qwen2 models, not {model_type}: "
                        "export this model as a Hugging Face folder instead.")
    problem = _config_problem(config)
    if problem:
        raise UserError(f"this {model_type} model {problem}, which the GGUF export cannot keep: "
                        "export it as a Hugging Face folder instead.")
    _check_tokenizer(loaded.tokenizer, config.vocab_size)
    _tensor_plan(loaded, qtype)  # every tensor must have a llama.cpp name


def _config_problem(config) -> str | None:
    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    qwen2 = config.model_type == "qwen2"
    if rope_type != "default":
        return f"uses {rope_type} rope scaling"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"uses the {config.hidden_act} activation"
    # transformers' reader builds a Llama without biases whatever the file holds; Qwen2 always has q/k/v ones.
    if not qwen2 and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        return "has biases on its linear layers"
    if qwen2 and getattr(config, "use_sliding_window", False):
        return "uses sliding-window attention"
    if qwen2 and _head_dim(config) != config.hidden_size // config.num_attention_heads:
        return "has a head size other than hidden size / heads"  # the qwen2 reader ignores a stated head size
    return None


def _check_tokenizer(tokenizer, vocab_size: int) -> None:
    if tokenizer is None or not hasattr(tokenizer, "backend_tokenizer"):
        raise UserError("the model has no fast tokenizer (tokenizer.json), which a GGUF file must carry: "
                        "open a model folder that includes its tokenizer.")
    spec = _tokenizer_json(tokenizer)
    if spec["model"].get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise UserError("GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM style) "
                        "only: export this model as a Hugging Face folder instead.")
    if not _merges(spec):
        raise UserError("the tokenizer has no BPE merges, which llama.cpp needs to read it: "
                        "export this model as a Hugging Face folder instead.")
    if max(tokenizer.get_vocab().values()) >= vocab_size:
        raise UserError(f"the tokenizer has ids beyond the model's {vocab_size} embeddings: "
                        "use the tokenizer that belongs to this model.")


def write_gguf_file(loaded, path: Path, qtype: str, job: Job | None = None) -> int:
    """Write `loaded` into the GGUF file `path`, one tensor at a time; return its size in bytes."""
    job, path = as_job(job), Path(path)
    check_gguf(loaded, qtype)
    plan = _tensor_plan(loaded, qtype)
    _report_caveats(loaded, plan, qtype, job)
    writer = _metadata_writer(loaded, qtype, path)
    try:
        for tensor in plan:  # shapes in weights, not bytes: the numpy dtype only matters when it is uint8
            writer.add_tensor_info(tensor.name, tensor.shape, np.float32, tensor.nbytes, raw_dtype=tensor.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        state = loaded.model.state_dict()
        for i, tensor in enumerate(plan):
            job.check()
            job.phase("export gguf", i, len(plan), tensor.name)
            writer.write_tensor_data(_encode(state[tensor.source], tensor, loaded.model.config))
        job.phase("export gguf", len(plan), len(plan), path.name)
    except BaseException:
        writer.close()
        path.unlink(missing_ok=True)
        raise
    writer.close()
    return path.stat().st_size


def export_gguf(loaded, out, report: dict, qtype: str = "f16", *, overwrite: bool = False,
                job: Job | None = None) -> Path:
    """Write `model-{qtype}.gguf` and `sparsity.json` into the folder `out`, atomically; return the folder."""
    check_gguf(loaded, qtype)
    with atomic_folder(out, overwrite, job) as tmp:
        file = tmp / f"model-{qtype}.gguf"
        size = write_gguf_file(loaded, file, qtype, job)
        kept = _kept_f16(_tensor_plan(loaded, qtype), qtype)
        write_report(tmp, {**report, "storage": f"GGUF: {file.name}, pruned weights stored as zeros",
                           "gguf": {"file": file.name, "type": qtype, "bytes": size, "kept_f16": kept}})
    return Path(out).expanduser().resolve()


def gguf_bytes(loaded, qtype: str) -> int:
    """The size `write_gguf_file` would write, computed without writing: header, metadata and tensors."""
    check_gguf(loaded, qtype)
    plan = _tensor_plan(loaded, qtype)
    writer = _metadata_writer(loaded, qtype, None)
    head = 24 + sum(8 + len(key.encode()) + 4 + _value_bytes(v.value, v.type, v.sub_type)
                    for key, v in writer.kv_data[0].items())
    head += sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in plan)
    return _padded(head) + sum(_padded(t.nbytes) for t in plan)


# --- tensors ---------------------------------------------------------------------------------------

def _tensor_plan(loaded, qtype: str) -> list[_Tensor]:
    model, config = loaded.model, loaded.model.config
    names = gguf.get_tensor_name_map(_ARCHS[config.model_type], config.num_hidden_layers)
    skipped = _tied_output_key(model)
    plan = []
    for key, value in model.state_dict().items():
        if key == skipped:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"the model has a tensor llama.cpp has no name for ({key}): "
                            "export it as a Hugging Face folder instead.")
        plan.append(_Tensor(name, key, tuple(value.shape), _storage_type(tuple(value.shape), qtype)))
    return plan


def _tied_output_key(model) -> str | None:
    """The state-dict key of the output projection when it shares the embedding matrix (llama.cpp then omits it)."""
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or output.weight.data_ptr() != embedding.weight.data_ptr():
        return None
    return next(f"{name}.weight" for name, module in model.named_modules() if module is output)


def _storage_type(shape: tuple[int, ...], qtype: str) -> GGML:
    if len(shape) < 2:
        return GGML.F32
    if qtype != "f16" and shape[-1] % _BLOCK:
        return GGML.F16
    return _MATRIX_TYPE[qtype]


def _kept_f16(plan: list[_Tensor], qtype: str) -> list[str]:
    """The matrices written as F16 instead of `qtype` (their rows do not split into blocks of 32)."""
    return [t.name for t in plan if len(t.shape) == 2 and t.ggml_type != _MATRIX_TYPE[qtype]]


def _encode(value: torch.Tensor, tensor: _Tensor, config) -> np.ndarray:
    weights = value.detach().to("cpu", torch.float32)
    if _ARCHS[config.model_type] in _PERMUTED_ARCHS:
        if ".attn_q." in tensor.name:
            weights = _interleave_rope_rows(weights, config.num_attention_heads)
        elif ".attn_k." in tensor.name:
            weights = _interleave_rope_rows(weights, _kv_heads(config))
    return gguf.quants.quantize(weights.numpy(), tensor.ggml_type)


def _interleave_rope_rows(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from halves (HF's rotate_half) to pairs (llama.cpp's rotary layout).

    Within a head HF rotates row i with row i + d/2; llama.cpp rotates rows 2i and 2i+1.
    transformers' GGUF reader applies the inverse, so the round trip is the identity.
    """
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).transpose(1, 2).reshape(weights.shape)


def _report_caveats(loaded, plan: list[_Tensor], qtype: str, job: Job) -> None:
    kept = _kept_f16(plan, qtype)
    if kept:
        job.message(f"{len(kept)} matrices stay F16 in the {qtype} file because their rows are not a multiple "
                    f"of {_BLOCK} weights: {', '.join(kept)}", "warning")
    window = getattr(loaded.model.config, "sliding_window", None)
    if window and window < loaded.context_length:
        job.message(f"the model's {window}-token sliding window is not kept in the GGUF file: "
                    f"it attends to the whole context, as llama.cpp runs Mistral.", "warning")
    if _pre_tokenizer_name(_tokenizer_json(loaded.tokenizer)) == "default":
        job.message("llama.cpp does not know this tokenizer's pre-tokenizer and will split text with its default "
                    "rule, which can tokenize some text differently.", "warning")


# --- metadata --------------------------------------------------------------------------------------

def _metadata_writer(loaded, qtype: str, path: Path | None) -> gguf.GGUFWriter:
    config = loaded.model.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[_ARCHS[config.model_type]])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(_display_name(loaded))
    writer.add_file_type(_FILE_TYPE[qtype])
    if qtype != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_architecture(writer, config, loaded.context_length)
    _add_tokenizer(writer, loaded.tokenizer, config.vocab_size)
    return writer


def _add_architecture(writer: gguf.GGUFWriter, config, context_length: int) -> None:
    head_dim = _head_dim(config)
    writer.add_context_length(context_length)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(_kv_heads(config))
    writer.add_rope_freq_base(float(_rope_parameters(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    tokens, types = _vocabulary(tokenizer, vocab_size)
    spec = _tokenizer_json(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(spec))
    special_ids = {writer.add_bos_token_id: tokenizer.bos_token_id, writer.add_eos_token_id: tokenizer.eos_token_id,
                   writer.add_unk_token_id: tokenizer.unk_token_id, writer.add_pad_token_id: tokenizer.pad_token_id}
    for add, token_id in special_ids.items():
        if token_id is not None:
            add(token_id)
    # What the tokenizer does, not what its config claims: llama.cpp adds these markers around every prompt.
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id])
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every embedding row's token as spelled in the byte-level vocabulary, and its llama.cpp token type."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer, as llama.cpp's converter names them
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _tokenizer_json(tokenizer) -> dict:
    """The tokenizer as its `tokenizer.json` spells it."""
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _merges(spec: dict) -> list[str]:
    merges = spec["model"].get("merges") or []
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]


def _pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE ("gpt2", "llama3", "qwen2", ...)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return _known_splits().get(steps[0].get("pattern", {}).get("Regex"), "default")
    return "default"


def _known_splits() -> dict[str, str]:
    """Split regex -> llama.cpp pre-tokenizer name, from the table transformers' GGUF reader maps back with."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # older transformers: every Split tokenizer falls back to llama.cpp's default rule
        return {}
    names: dict[str, str] = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(regex, name)
    return names


# --- small helpers ---------------------------------------------------------------------------------

def _rope_parameters(config) -> dict:
    return getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}


def _display_name(loaded) -> str:
    # transformers reads a llama file named exactly "mistral" as a Mistral, which gguf-py cannot map back.
    return "Mistral" if loaded.name == "mistral" else loaded.name


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGNMENT) * _ALIGNMENT


_SCALAR_BYTES = {Value.UINT8: 1, Value.INT8: 1, Value.BOOL: 1, Value.UINT16: 2, Value.INT16: 2, Value.UINT32: 4,
                 Value.INT32: 4, Value.FLOAT32: 4, Value.UINT64: 8, Value.INT64: 8, Value.FLOAT64: 8}


def _value_bytes(value, kind: Value, item_kind: Value | None = None) -> int:
    """How many bytes a metadata value takes in the file (its type tag counted by the caller)."""
    if kind in _SCALAR_BYTES:
        return _SCALAR_BYTES[kind]
    if kind == Value.STRING:
        return 8 + len(value.encode() if isinstance(value, str) else value)
    item_kind = item_kind or Value.get_type(value[0])
    return 4 + 8 + sum(_value_bytes(item, item_kind) for item in value)
