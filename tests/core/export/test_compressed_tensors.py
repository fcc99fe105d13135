"""compressed-tensors export: transformers loads the folder back to exactly the model in memory, packed to size."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

from core.errors import UserError
from core.events import Job, Message, Phase, Recorder
from core.export import compressed_tensors as ct
from core.export.compressed_tensors import compressed_bytes, export_compressed, require_compressed_tensors
from core.formats.names import CALIBRATION, REPORT
from core.models.architectures import set_weight_matrix, weight_matrix
from core.models.open import open_model
from core.quantization.grid import Grid
from core.quantization.quantized import QuantizedLayer
from core.quantization.rtn import round_to_nearest
from tests.tiny_models import tiny_calibration

PER_CHANNEL = 0
REPORT_IN = {"tool": {"name": "compression-studio"}, "storage": "dense"}


def quantize_all(loaded, bits: int, symmetric: bool, group_size: int):
    """Round every decoder linear onto its grid in place (every other one 50% magnitude-pruned first);
    the records and the pruned masks by module name."""
    records, masks = {}, {}
    for block in loaded.layout.inventory:
        for i, info in enumerate(block.linears):
            layer = loaded.model.get_submodule(info.full_name)
            weight = weight_matrix(layer).detach()
            pruned = None
            if i % 2 == 0:
                smallest = weight.abs().argsort(dim=1)[:, : weight.shape[1] // 2]
                pruned = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, smallest, True)
                masks[info.full_name] = pruned
            grid = Grid(bits, symmetric, weight.dtype)
            quantized, record = round_to_nearest(weight, grid, group_size or info.in_features, pruned)
            set_weight_matrix(layer, quantized.to(weight.dtype))
            records[info.full_name] = record
    return records, masks


def quantized_model(folder, dtype, bits, symmetric, group_size):
    loaded = open_model(folder, dtype=dtype)
    records, masks = quantize_all(loaded, bits, symmetric, group_size)
    return loaded, records, masks


def tensors(file) -> dict[str, torch.Tensor]:
    with safe_open(str(file), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# (dtype, bits, symmetric, group size); transformers 5 loads asymmetric folders only when dequantizing them
CASES = {
    "int4-g32-fp32": (torch.float32, 4, True, 32),
    "int4-g32-bf16": (torch.bfloat16, 4, True, 32),
    "int4-g32-asym": (torch.float32, 4, False, 32),
    "int8-channel": (torch.float32, 8, True, PER_CHANNEL),
    "int8-channel-asym-fp16": (torch.float16, 8, False, PER_CHANNEL),
}


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`")   # dequantize=True for asymmetric folders
@pytest.mark.parametrize("case", CASES)
def test_transformers_loads_exactly_the_model_in_memory(case, tiny_llama_folder, tmp_path):
    dtype, bits, symmetric, group_size = CASES[case]
    loaded, records, masks = quantized_model(tiny_llama_folder, dtype, bits, symmetric, group_size)
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    calib = tiny_calibration(loaded.tokenizer, nsamples=2, seqlen=16)
    recorder = Recorder()
    out = export_compressed(loaded, tmp_path / "out", REPORT_IN, records, calib, job=Job(recorder))

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", REPORT, CALIBRATION} <= names
    assert all(torch.equal(t, before[name]) for name, t in loaded.model.state_dict().items())    # not mutated
    assert not hasattr(loaded.model.config, "quantization_config")
    phases = recorder.of(Phase)
    assert phases[-1].done == phases[-1].total == len(records) + 2 and {p.name for p in phases} == {"export"}
    assert [m.level for m in recorder.of(Message)] == ([] if symmetric else ["info"])     # how to load it

    kwargs = {} if symmetric else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    reloaded = AutoModelForCausalLM.from_pretrained(out, **kwargs).eval()
    ids = calib.input_ids
    # The loader dequantizes (q - z)·s in the scale dtype, exactly what the engine computed: tolerance 0.
    assert torch.equal(logits(reloaded, ids), logits(loaded.model, ids))
    assert reloaded.dtype == dtype
    for name in records:
        assert torch.equal(reloaded.get_submodule(name).weight, loaded.model.get_submodule(name).weight), name
    for name, pruned in masks.items():
        weight = reloaded.get_submodule(name).weight
        assert pruned.sum() == pruned.numel() // 2 and (weight[pruned] == 0).all(), name
    for name in ("model.embed_tokens", "lm_head"):       # unquantized, in the model dtype
        assert torch.equal(reloaded.get_submodule(name).weight, loaded.model.get_submodule(name).weight)

    report = json.loads((out / REPORT).read_text())
    assert report["tool"] == REPORT_IN["tool"] and report["storage"].startswith("compressed-tensors pack-quantized")


def test_config_names_each_scheme_and_the_file_holds_the_packed_codes(tiny_llama_folder, tmp_path):
    loaded, records, _ = quantized_model(tiny_llama_folder, torch.float32, 4, False, 32)
    out = export_compressed(loaded, tmp_path / "out", REPORT_IN, records)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["quantization_status"] == "compressed" and config["sparsity_config"] == {}
    assert config["ignore"] == [] and config["version"]
    (group,) = config["config_groups"].values()
    assert sorted(group["targets"]) == sorted(records)
    assert group["weights"] == {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                                "group_size": 32, "dynamic": False}
    assert group["format"] == "pack-quantized"

    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    saved = tensors(out / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    weight, record = loaded.model.get_submodule(name).weight, records[name]
    assert f"{name}.weight" not in saved and saved[f"{name}.weight_packed"].dtype == torch.int32
    assert saved[f"{name}.weight_packed"].shape == (64, 128 // 8)
    assert torch.equal(unpack_from_int32(saved[f"{name}.weight_packed"], 4, weight.shape), record.codes(weight))
    assert torch.equal(saved[f"{name}.weight_scale"], record.scale)
    zero = saved[f"{name}.weight_zero_point"]               # packed along the outputs: [out / 8, groups]
    assert zero.shape == (64 // 8, 128 // 32) and zero.dtype == torch.int32
    assert torch.equal(unpack_from_int32(zero, 4, record.zero.shape, packed_dim=0), record.zero)
    assert saved["lm_head.weight"].dtype == torch.float32 and "lm_head.weight_packed" not in saved


def test_int4_and_int8_layers_go_into_separate_config_groups(tiny_llama_folder, tmp_path):
    loaded, records, _ = quantized_model(tiny_llama_folder, torch.float32, 4, True, 32)
    skipped = "model.layers.1.self_attn.o_proj"
    del records[skipped]                                     # stays dense
    for name in [n for n in records if ".mlp." in n]:        # the MLP in int8, one scale per output channel
        layer = loaded.model.get_submodule(name)
        weight, records[name] = round_to_nearest(layer.weight.detach(), Grid(8, True), layer.in_features)
        set_weight_matrix(layer, weight)
    out = export_compressed(loaded, tmp_path / "out", REPORT_IN, records)

    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    by_bits = {g["weights"]["num_bits"]: g for g in groups.values()}
    assert len(groups) == 2 and by_bits[8]["weights"]["strategy"] == "channel"
    assert by_bits[8]["weights"]["group_size"] is None and by_bits[4]["weights"]["group_size"] == 32
    assert sorted(by_bits[8]["targets"] + by_bits[4]["targets"]) == sorted(records)
    assert all(".mlp." in name for name in by_bits[8]["targets"])

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(reloaded, ids), logits(loaded.model, ids))
    assert not hasattr(reloaded.get_submodule(skipped), "quantization_scheme")
    assert hasattr(reloaded.get_submodule("model.layers.0.mlp.up_proj"), "quantization_scheme")


def test_int4_linear_layers_take_under_30_percent_of_fp16_and_the_estimate_matches(tiny_llama_folder, tmp_path):
    loaded, records, _ = quantized_model(tiny_llama_folder, torch.bfloat16, 4, True, 32)
    estimate = compressed_bytes(loaded, records)
    out = export_compressed(loaded, tmp_path / "out", REPORT_IN, records)
    saved = tensors(out / "model.safetensors")
    nbytes = lambda t: t.numel() * t.element_size()
    linear = sum(nbytes(t) for key, t in saved.items() if key.rsplit(".", 1)[0] in records)
    fp16 = sum(2 * loaded.model.get_submodule(name).weight.numel() for name in records)
    assert linear <= 0.30 * fp16                             # 0.28: 4 bits + a bfloat16 scale per 32 weights
    total = sum(nbytes(t) for t in saved.values())
    assert abs(estimate - total) <= 0.01 * total
    dense = sum(nbytes(t) for t in loaded.model.state_dict().values())
    assert total < 0.75 * dense                              # embeddings and lm_head stay bfloat16


def test_tied_embeddings_are_saved_once_and_stay_tied(tmp_path):
    from tests.tiny_models import tiny_model_folder

    folder = tiny_model_folder("llama", tmp_path / "tied", tie_word_embeddings=True)
    loaded, records, _ = quantized_model(folder, torch.float32, 4, True, 32)
    out = export_compressed(loaded, tmp_path / "out", REPORT_IN, records)
    saved = tensors(out / "model.safetensors")
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" not in saved
    assert compressed_bytes(loaded, records) == sum(t.numel() * t.element_size() for t in saved.values())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(reloaded, ids), logits(loaded.model, ids))


@pytest.fixture(scope="module")
def int4(tiny_llama_folder):
    loaded, records, _ = quantized_model(tiny_llama_folder, torch.float32, 4, True, 32)
    return loaded, records


def test_without_the_package_the_export_is_refused_and_nothing_is_written(int4, tmp_path, monkeypatch):
    loaded, records = int4
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)        # `import compressed_tensors` fails
    with pytest.raises(UserError, match=r"pip install compressed-tensors.*\.\[serve\]"):
        require_compressed_tensors()
    assert not ct.available()
    with pytest.raises(UserError, match="needs the compressed-tensors package"):
        export_compressed(loaded, tmp_path / "out", REPORT_IN, records)
    assert list(tmp_path.iterdir()) == []                                # no out, no .out.partial-*


def test_an_existing_folder_is_refused_without_overwrite(int4, tmp_path):
    loaded, records = int4
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        export_compressed(loaded, tmp_path / "out", REPORT_IN, records)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    export_compressed(loaded, tmp_path / "out", REPORT_IN, records, overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def fail_compressing_the_third_layer(monkeypatch):
    real, calls = ct.compress_layer, []

    def compress_then_fail(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real(*args)

    monkeypatch.setattr(ct, "compress_layer", compress_then_fail)
    return RuntimeError


def interrupt_after_the_weights(monkeypatch):
    from compressed_tensors.compressors import ModelCompressor

    def interrupted(self, folder):
        assert any(p.suffix == ".safetensors" for p in Path(folder).iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelCompressor, "update_config", interrupted)
    return KeyboardInterrupt


@pytest.mark.parametrize("failure", [fail_compressing_the_third_layer, interrupt_after_the_weights])
def test_a_failed_export_leaves_no_folder(int4, tmp_path, monkeypatch, failure):
    loaded, records = int4
    with pytest.raises(failure(monkeypatch)):
        export_compressed(loaded, tmp_path / "out", REPORT_IN, records)
    assert list(tmp_path.iterdir()) == []


def test_records_the_format_cannot_store_are_refused_before_writing(int4, tmp_path):
    loaded, records = int4
    with pytest.raises(UserError, match="no layer of this model is quantized"):
        export_compressed(loaded, tmp_path / "out", REPORT_IN, {})
    bad = dict(records, **{"model.layers.0.mlp.down_proj": QuantizedLayer(4, True, 48, torch.ones(64, 3), None)})
    with pytest.raises(UserError, match="group size 48 does not divide its 128 inputs"):
        export_compressed(loaded, tmp_path / "out", REPORT_IN, bad)
    assert list(tmp_path.iterdir()) == []


def test_asymmetric_exports_warn_what_transformers_cannot_load(tiny_llama_folder, tmp_path):
    loaded, records, _ = quantized_model(tiny_llama_folder, torch.float32, 8, False, 64)   # 64 per row, 64 in 128
    recorder = Recorder()
    out = export_compressed(loaded, tmp_path / "out", REPORT_IN, records, job=Job(recorder))
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["strategy"] for g in groups.values()) == ["channel", "group"]
    (warning,) = recorder.of(Message)
    assert warning.level == "warning" and "several config groups" in warning.text and "vLLM" in warning.text
