"""`prune --quantize` and `quantize`: the stack from the command line, its formats, and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.cli import main

BASE = ["--nsamples", "4", "--seqlen", "64", "--device", "cpu", "--json"]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prune_then_quantize_exports_compressed_tensors_by_default(tiny_llama_folder, text_file, tmp_path, capsys):
    out = tmp_path / "int4"
    code, stdout, err = _run(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--method", "sparsegpt",
                              "--pattern", "2:4", "--quantize", "int4", "--out", str(out), *BASE], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["export"]["format"] == "compressed-tensors"
    assert result["quantization"]["bits"] == 4 and result["quantization"]["layers"] == 14
    assert result["quantization"]["group_sizes"] == [64, 128]       # 64-wide inputs, the 128-wide down projection
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    report = json.loads((out / "sparsity.json").read_text())
    assert report["pruning"]["quantization"]["bits"] == 4
    assert all(l["quant_error"] is not None and l["notes"]["quantization"]["bits"] == 4
               for l in report["pruning"]["layers"])
    down = AutoModelForCausalLM.from_pretrained(out).model.layers[1].mlp.down_proj
    weight = down.weight if hasattr(down, "weight") and down.weight.is_floating_point() else None
    if weight is not None:                                          # a decompressed linear: its 2:4 zeros survive
        assert (weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max() <= 2


def test_quantize_alone_writes_int8_and_prints_it(tiny_llama_folder, text_file, tmp_path, capsys):
    out = tmp_path / "int8"
    code, stdout, err = _run(["quantize", str(tiny_llama_folder), "--calib", str(text_file), "--quantize", "int8",
                              "--group-size", "0", "--nsamples", "4", "--seqlen", "64", "--device", "cpu",
                              "--out", str(out)], capsys)
    assert code == 0, err
    assert "quantized 14 layers to int8 (gptq, symmetric, groups of 64/128)" in stdout   # per channel: all inputs
    assert "compressed-tensors (int8)" in stdout and "pruned" not in stdout
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized"     # weight-only int8 as compressed-tensors and vLLM store it
    weights = [group["weights"] for group in config["config_groups"].values()]
    assert {w["num_bits"] for w in weights} == {8} and {w["strategy"] for w in weights} == {"channel"}


def test_hf_format_of_a_quantized_run_stores_the_dequantized_weights(tiny_llama_folder, text_file, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, err = _run(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--quantize", "int4",
                              "--format", "hf", "--out", str(out), *BASE], capsys)
    assert code == 0, err
    assert json.loads(stdout)["export"]["format"] == "hf"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    report = json.loads((out / "sparsity.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    layer = report["pruning"]["layers"][0]
    weight = model.get_submodule(layer["name"]).weight.detach()
    group = layer["notes"]["quantization"]["group_size"]
    per_group = weight.reshape(weight.shape[0], -1, group)
    assert max(len(torch.unique(per_group[r, g])) for r in range(4) for g in range(per_group.shape[1])) <= 16


def test_gguf_of_the_tiny_byte_tokenizer_is_refused_before_the_work(tiny_llama_folder, text_file, tmp_path, capsys):
    """The tiny models' tokenizer has no BPE merges, which llama.cpp needs (tests/core/export/test_gguf_export.py
    writes and reads GGUF files with a trained BPE and the demo model)."""
    code, stdout, err = _run(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--quantize", "int4",
                              "--format", "gguf", "--out", str(tmp_path / "g"), *BASE], capsys)
    assert code == 2 and "no BPE merges" in err and not (tmp_path / "g").exists()
    assert "Traceback" not in err and stdout == ""


def _bad(tiny_llama_folder, text_file, tmp_path):
    base = ["prune", str(tiny_llama_folder), "--calib", str(text_file), "--nsamples", "2", "--seqlen", "64",
            "--out", str(tmp_path / "out")]
    return {
        "compressed-tensors unquantized": (base + ["--format", "compressed-tensors"], "not quantized"),
        "compact not 2:4": (base + ["--quantize", "int4", "--format", "compact"], "2:4 weights only"),
        "group size not a multiple of 8": (base + ["--quantize", "int4", "--group-size", "20"], "multiple of 8"),
        "bits": (base + ["--quantize", "int3"], "invalid choice"),
        "joint without sparsegpt": (base + ["--quantize", "int4", "--joint"], "--method sparsegpt"),
        "group size without quantize": (base + ["--group-size", "64"], "add --quantize"),
        "quantize a stream": (base + ["--quantize", "int4", "--stream", "--format", "hf"], "streamed"),
        "gguf type unknown": (base + ["--format", "gguf", "--gguf-type", "q2_k"], "invalid choice"),
        "two formats": (base + ["--compact", "--format", "hf"], "two formats"),
    }


@pytest.mark.parametrize("case", ["compressed-tensors unquantized", "compact not 2:4", "group size not a multiple of 8",
                                  "bits", "joint without sparsegpt", "group size without quantize",
                                  "quantize a stream", "gguf type unknown", "two formats"])
def test_bad_quantization_input_exits_2_and_writes_nothing(case, tiny_llama_folder, text_file, tmp_path, capsys):
    argv, message = _bad(tiny_llama_folder, text_file, tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = _run(argv, capsys)
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_missing_compressed_tensors_package_is_one_line(tiny_llama_folder, text_file, tmp_path, capsys, monkeypatch):
    from core.export import compressed_tensors
    from core.errors import UserError

    def missing():
        raise UserError("compressed-tensors is not installed: pip install compressed-tensors")

    monkeypatch.setattr(compressed_tensors, "require_compressed_tensors", missing)
    code, stdout, err = _run(["prune", str(tiny_llama_folder), "--calib", str(text_file), "--quantize", "int4",
                              "--out", str(tmp_path / "out"), *BASE], capsys)
    assert code == 2 and "pip install compressed-tensors" in err and not (tmp_path / "out").exists()
