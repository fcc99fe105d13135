"""Hostile or damaged model files are refused with one readable line, before transformers sees them and
before anything is allocated from a size the file claims: a config.json whose auto_map needs its
authors' code while trust is off, a config.json that is not a JSON object, and safetensors or GGUF
headers that claim more data than the file holds."""

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from core.cli.main import main
from core.errors import UserError
from core.formats.gguf_check import check_gguf_file
from core.formats.safetensors_reader import TensorReader, check_safetensors_file
from core.models import open as opening
from core.models.open import open_model

EVIL_MAP = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
TRUST = r"--trust-remote-code \(in the studio: the 'trust remote code' box"


@pytest.fixture
def never_transformers(monkeypatch):
    """Fails the test if the model loading reaches transformers."""
    def reached(*args, **kwargs):
        raise AssertionError("transformers was called on a file that should have been refused")
    monkeypatch.setattr(opening, "_from_pretrained", reached)
    monkeypatch.setattr(opening, "_from_compact", reached)


@pytest.fixture
def folder(tiny_llama_folder, tmp_path):
    """A private copy of the tiny Llama folder, to damage."""
    return shutil.copytree(tiny_llama_folder, tmp_path / "model")


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- config.json


@pytest.mark.parametrize("changes", [dict(auto_map=EVIL_MAP, model_type="evil_family", architectures=["EvilForCausalLM"]),
                                     dict(auto_map=EVIL_MAP, model_type=None),
                                     dict(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
                                          model_type="t5")],   # a config transformers knows, but no causal LM of it
                         ids=["unknown family", "no model_type", "known config, no causal LM"])
def test_an_auto_map_needing_remote_code_is_refused_while_trust_is_off(folder, changes, never_transformers):
    edit_json(folder / "config.json", **changes)
    with pytest.raises(UserError, match=r"config.json asks to run the model authors' own code \(auto_map .*modeling_evil"
                                        rf".*\); open it with {TRUST}.*if you trust its source\.$") as caught:
        open_model(folder)
    assert "\n" not in str(caught.value)


def test_with_trust_on_the_check_passes_and_transformers_is_asked(folder, monkeypatch):
    edit_json(folder / "config.json", auto_map=EVIL_MAP, model_type="evil_family")
    calls = []

    def record(location, source, dtype, trust_remote_code, **kwargs):
        calls.append(trust_remote_code)
        raise UserError("reached transformers")
    monkeypatch.setattr(opening, "_from_pretrained", record)
    with pytest.raises(UserError, match="reached transformers"):
        open_model(folder, trust_remote_code=True)
    assert calls == [True]


def test_an_auto_map_transformers_has_built_in_code_for_still_opens_without_trust(folder):
    """Many hub configs (Phi-3, Qwen2...) carry an auto_map for a family transformers has: with trust off it
    uses its own classes and runs nothing of the authors'. Refusing these would push users to trust."""
    edit_json(folder / "config.json", auto_map=EVIL_MAP)
    loaded = open_model(folder)
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.tokenizer is not None


def test_a_tokenizer_that_needs_remote_code_is_refused_while_trust_is_off(folder):
    edit_json(folder / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
              auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})
    with pytest.raises(UserError, match=rf"tokenizer_config.json asks to run the model authors' own code .*{TRUST}"):
        open_model(folder)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2, 3]", b"\xff\xfe\x00garbage", b""],
                         ids=["not json", "a list", "not utf-8", "empty"])
def test_a_config_json_that_is_not_a_json_object(folder, content, never_transformers):
    (folder / "config.json").write_bytes(content)
    with pytest.raises(UserError, match=r"config.json is not a valid config \(it must be a JSON object\)"):
        open_model(folder)


# ---------------------------------------------------------------- safetensors


def rewrite_header(weights, change):
    """The weights file with its JSON header passed through `change`, the data left as it was."""
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length:])


def beyond_the_file(header):
    begin, end = header["lm_head.weight"]["data_offsets"]
    header["lm_head.weight"]["data_offsets"] = [begin + 10**9, end + 10**9]


def huge_tensor(header):    # 10^12 elements, 4 TB claimed, in a file of 430 kB
    begin, _ = header["lm_head.weight"]["data_offsets"]
    header["lm_head.weight"].update(shape=[10**6, 10**6], data_offsets=[begin, begin + 4 * 10**12])


def shape_not_its_bytes(header):
    header["lm_head.weight"]["shape"] = [10**6, 10**6]


def begin_after_end(header):
    begin, end = header["lm_head.weight"]["data_offsets"]
    header["lm_head.weight"]["data_offsets"] = [end, begin]


def no_offsets(header):
    del header["lm_head.weight"]["data_offsets"]


SAFETENSORS_DAMAGE = {
    "header length past the file": (lambda w: w.write_bytes((10**12).to_bytes(8, "little") + w.read_bytes()[8:]),
                                    r"model.safetensors is damaged or not a safetensors file: its header claims "
                                    r"1,000,000,000,000 bytes but the file has [\d,]+"),
    "too short": (lambda w: w.write_bytes(b"\x01\x02"), r"model.safetensors is not a valid safetensors file: it is 2 bytes"),
    "header not an object": (lambda w: w.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]"),
                             r"model.safetensors is not a valid safetensors file \(its header is unreadable\)"),
    "offsets past the file": (lambda w: rewrite_header(w, beyond_the_file),
                              r"model.safetensors: tensor lm_head.weight claims bytes 1,000,000,000 to [\d,]+ of a data "
                              r"region of [\d,]+ bytes"),
    "huge claimed tensor": (lambda w: rewrite_header(w, huge_tensor),
                            r"tensor lm_head.weight claims bytes 0 to 4,000,000,000,000 of a data region"),
    "shape larger than its bytes": (lambda w: rewrite_header(w, shape_not_its_bytes),
                                    r"tensor lm_head.weight has shape \[1000000, 1000000\] of F32 "
                                    r"\(4,000,000,000,000 bytes\) but 66,304 bytes of data"),
    "begin after end": (lambda w: rewrite_header(w, begin_after_end), r"tensor lm_head.weight claims bytes 66,304 to 0"),
    "no data_offsets": (lambda w: rewrite_header(w, no_offsets),
                        r"tensor lm_head.weight has no valid dtype, shape and data_offsets"),
}


@pytest.mark.parametrize("damage", SAFETENSORS_DAMAGE)
def test_a_safetensors_header_claiming_more_than_the_file_is_refused(folder, damage, never_transformers):
    damage_file, message = SAFETENSORS_DAMAGE[damage]
    damage_file(folder / "model.safetensors")
    with pytest.raises(UserError, match=message) as caught:
        open_model(folder)                  # in memory: checked before transformers and safetensors map it
    assert str(caught.value).startswith(f"could not read the model at {folder}: model.safetensors")
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=message):
        TensorReader(folder)                # streaming: our own reader


def test_a_shard_index_naming_a_missing_or_unreadable_file(folder):
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(UserError, match="names model-00002-of-00002.safetensors, which is not a file in"):
        TensorReader(folder)
    index.write_text("{}")
    with pytest.raises(UserError, match=r"model.safetensors.index.json is not a valid shard index"):
        TensorReader(folder)


def test_a_valid_safetensors_file_reads_as_before(folder):
    entries = check_safetensors_file(folder / "model.safetensors")
    dtype, shape, begin, end = entries["lm_head.weight"]
    assert dtype == "F32" and shape == [259, 64] and end - begin == 259 * 64 * 4
    reader = TensorReader(folder)
    expected = open_model(folder).model.state_dict()
    assert torch.equal(reader.get("model.layers.1.mlp.down_proj.weight"), expected["model.layers.1.mlp.down_proj.weight"])


# ---------------------------------------------------------------- GGUF


def _permute(weight, heads):
    """llama.cpp's order of the q and k rows (transformers undoes it when it reads the file)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


GGUF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_folder, tmp_path_factory):
    """The tiny Llama written as an F32 .gguf file, the way llama.cpp lays one out: (path, the folder's model)."""
    import gguf

    model = open_model(tiny_llama_folder).model
    config, state = model.config, {k: v.numpy() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(config.vocab_size)])
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for block in range(config.num_hidden_layers):
        for ours, theirs in GGUF_NAMES.items():
            weight = state[f"model.layers.{block}.{theirs}.weight"]
            if ours in ("attn_q", "attn_k"):
                heads = config.num_attention_heads if ours == "attn_q" else config.num_key_value_heads
                weight = np.ascontiguousarray(_permute(weight, heads))
            writer.add_tensor(f"blk.{block}.{ours}.weight", weight)
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model


def patch_tensor_info(data: bytes, name: str, *, dims=None, offset=None) -> bytes:
    """`data` with one tensor's dimensions or data offset in the GGUF tensor table rewritten."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    (count,) = struct.unpack_from("<I", data, at)
    patched = bytearray(data)
    if dims is not None:
        struct.pack_into(f"<{count}Q", patched, at + 4, *dims)
    if offset is not None:
        struct.pack_into("<Q", patched, at + 4 + 8 * count + 4, offset)
    return bytes(patched)


GGUF_DAMAGE = {
    "cut in half": (lambda d: d[:len(d) // 2],
                    r"m.gguf is damaged or cut short: tensor [\w.]+ claims [\d,]+ bytes at offset [\d,]+, past the end "
                    r"of the file \([\d,]+ bytes\); download or copy it again\.$"),
    "header cut short": (lambda d: d[:64], r"m.gguf is damaged or cut short: .* would need [\d,]+ bytes from offset "
                                           r"24, but the file ends at 64"),
    "string cut short": (lambda d: d[:200], r"m.gguf is damaged or cut short: .*the file ends at 200"),
    "offset past the file": (lambda d: patch_tensor_info(d, "output.weight", offset=10**12),
                             r"tensor output.weight claims 66,304 bytes at offset 1,000,000,0[\d,]+, past the end"),
    "huge claimed tensor": (lambda d: patch_tensor_info(d, "output.weight", dims=[10**6, 10**6]),
                            r"tensor output.weight claims 4,000,000,000,000 bytes at offset [\d,]+, past the end"),
    "bad magic": (lambda d: b"GGUX" + d[4:], r"m.gguf is not a GGUF file \(it does not start with the GGUF magic bytes\)"),
    "empty": (lambda d: b"", r"m.gguf is not a GGUF file \(it is 0 bytes long\)"),
    "unknown version": (lambda d: d[:4] + struct.pack("<I", 99) + d[8:], r"m.gguf is GGUF version 99, which is not supported"),
    "absurd tensor count": (lambda d: d[:8] + struct.pack("<Q", 2**60) + d[16:],
                            r"m.gguf is damaged or cut short: .*1,152,921,504,606,846,976 tensors would need"),
}


@pytest.mark.parametrize("damage", GGUF_DAMAGE)
def test_a_damaged_gguf_file_is_refused_before_transformers(tiny_gguf, tmp_path, damage, never_transformers):
    damage_bytes, message = GGUF_DAMAGE[damage]
    path = tmp_path / "m.gguf"
    path.write_bytes(damage_bytes(tiny_gguf[0].read_bytes()))
    with pytest.raises(UserError, match=message) as caught:
        open_model(path)
    assert "\n" not in str(caught.value)


def test_a_valid_gguf_file_still_opens_and_matches_its_source(tiny_gguf):
    path, source = tiny_gguf
    check_gguf_file(path)
    loaded = open_model(path)
    assert loaded.kind == "gguf" and loaded.layout.family == "Llama"
    ids = torch.tensor([[1, 70, 71, 72, 200]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, source(ids).logits, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- through the command line


def test_the_cli_says_one_line_and_exits_2(folder, tiny_gguf, tmp_path, capsys):
    edit_json(folder / "config.json", auto_map=EVIL_MAP, model_type="evil_family")
    bad_gguf = tmp_path / "m.gguf"
    bad_gguf.write_bytes(tiny_gguf[0].read_bytes()[:1000])
    for target, words in [(folder, "asks to run the model authors' own code"), (bad_gguf, "m.gguf is damaged")]:
        assert main(["inspect", str(target)]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], captured.err
        assert captured.out == ""
