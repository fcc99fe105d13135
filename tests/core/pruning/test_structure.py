"""Structured shrinking (`--structure`): FLAP's fluctuation score, whole MLP channels and KV groups cut,
bias compensation where the family holds a bias, and an export transformers loads with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from core.cli import main
from core.errors import UserError
from core.inputs import parse_structure
from core.models.open import open_model
from core.pruning.structure.importance import ChannelStats, channel_scores, group_scores
from core.pruning.structure.run import shrink
from core.pruning.structure.spec import StructureSpec

from tests.tiny_models import INTERMEDIATE, tiny_calibration, tiny_model_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {family: tiny_model_folder(family, tmp_path_factory.mktemp(family)) for family in ("llama", "mistral", "qwen2")}


def _load(folder):
    loaded = open_model(folder)
    return loaded, tiny_calibration(loaded.tokenizer, nsamples=4, seqlen=32)


def _block0_inputs(loaded, calib):
    """Block 0's hidden states and call arguments on the dense model, caught by a pre-hook."""
    caught = []

    def hook(module, args, kwargs):
        caught.append((args[0] if args else kwargs["hidden_states"], args[1:], dict(kwargs)))

    handle = loaded.layout.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        loaded.model(input_ids=calib.input_ids, use_cache=False)
    handle.remove()
    return caught[0]


def _block0(loaded, calib):
    hidden, args, kwargs = _block0_inputs(loaded, calib)
    kwargs.pop("hidden_states", None)
    with torch.no_grad():
        out = loaded.layout.blocks[0](hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _inputs_of(layer, loaded, calib):
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        loaded.model(input_ids=calib.input_ids, use_cache=False)
    handle.remove()
    return torch.cat(seen).double()


def test_fluctuation_and_wanda_scores_match_brute_force(folders):
    loaded, calib = _load(folders["llama"])
    down = loaded.layout.blocks[1].mlp.down_proj
    stats = ChannelStats(down)
    with torch.no_grad():
        loaded.model(input_ids=calib.input_ids, use_cache=False)
    stats.close()
    x, w = _inputs_of(down, loaded, calib), down.weight.double()
    assert torch.allclose(channel_scores(down.weight, stats, "flap"), x.var(0) * w.pow(2).sum(0), rtol=1e-9)
    assert torch.allclose(channel_scores(down.weight, stats, "wanda"), x.norm(dim=0) * w.abs().sum(0), rtol=1e-9)
    assert torch.allclose(stats.mean, x.mean(0), rtol=1e-9, atol=1e-12)
    columns = torch.arange(8.0)
    assert group_scores(columns, 2).tolist() == [6.0, 22.0]


def test_mlp_half_removes_the_lowest_scoring_channels_of_every_block(folders):
    loaded, calib = _load(folders["mistral"])
    x = _inputs_of(loaded.layout.blocks[0].mlp.down_proj, loaded, calib)
    w = loaded.layout.blocks[0].mlp.down_proj.weight.double()
    expected = sorted(torch.argsort(x.var(0) * w.pow(2).sum(0))[:INTERMEDIATE // 2].tolist())
    result = shrink(loaded, calib, StructureSpec(mlp=0.5))
    assert result.blocks[0].channels == expected
    for block in loaded.layout.blocks:
        assert block.mlp.gate_proj.weight.shape[0] == block.mlp.down_proj.weight.shape[1] == INTERMEDIATE // 2
        assert block.mlp.down_proj.bias is None           # Mistral has no bias to compensate into
    assert loaded.model.config.intermediate_size == INTERMEDIATE // 2
    assert result.compensated == {"mlp": False, "attention": False}


def test_bias_compensation_lowers_the_block_output_error(folders):
    errors = {}
    for compensate in (False, True):
        loaded, calib = _load(folders["llama"])
        dense = _block0(loaded, calib)
        hidden, args, kwargs = _block0_inputs(loaded, calib)
        result = shrink(loaded, calib, StructureSpec(mlp=0.5, compensate=compensate))
        with torch.no_grad():
            out = loaded.layout.blocks[0](hidden, *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        errors[compensate] = float((out - dense).pow(2).sum() / dense.pow(2).sum())
        assert result.compensated["mlp"] is compensate
    assert errors[True] < errors[False]


def test_heads_half_removes_whole_kv_groups_and_the_model_runs(folders):
    loaded, calib = _load(folders["qwen2"])
    config = loaded.model.config
    heads, kv, head_dim = config.num_attention_heads, config.num_key_value_heads, 16
    result = shrink(loaded, calib, StructureSpec(heads=0.5))
    attention = loaded.layout.blocks[1].self_attn
    assert attention.q_proj.weight.shape[0] == attention.o_proj.weight.shape[1] == heads // 2 * head_dim
    assert attention.k_proj.weight.shape[0] == attention.k_proj.bias.shape[0] == kv // 2 * head_dim
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads // 2, kv // 2)
    assert all(len(b.groups) == 1 for b in result.blocks)
    logits = loaded.model(input_ids=calib.input_ids[:1]).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_export_loads_with_transformers_and_gives_the_same_logits(family, folders, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from core.export.folder import write_export

    loaded, calib = _load(folders[family])
    result = shrink(loaded, calib, StructureSpec(mlp=0.25, heads=0.5))
    out = write_export(loaded, tmp_path / "small", {"structure": result.describe()}, calib)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = calib.input_ids[:2]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == INTERMEDIATE * 3 // 4 and config["num_key_value_heads"] == 1
    assert config["num_attention_heads"] == 2 and config["head_dim"] == 16
    assert config.get("mlp_bias", False) is config.get("attention_bias", False) is (family == "llama")
    assert sum(p.numel() for p in reloaded.parameters()) == result.parameters_after < result.parameters_before


def test_parameter_count_drops_as_expected(folders):
    loaded, calib = _load(folders["mistral"])
    hidden, blocks = loaded.model.config.hidden_size, len(loaded.layout.blocks)
    result = shrink(loaded, calib, StructureSpec(mlp=0.25, heads=0.5))
    mlp = 3 * hidden * INTERMEDIATE // 4
    attention = 2 * hidden * 32 + 2 * hidden * 16      # q and o lose 2 heads of 16, k and v one of 16
    assert result.parameters_before - result.parameters_after == blocks * (mlp + attention)


@pytest.mark.parametrize("text, message", [
    ("mlp=1.0", "mlp=FRACTION"), ("heads=0.25", "whole key/value groups"), ("mlp=0.999", "leaves none"),
    ("heads=0.5,mlp=x", "mlp=FRACTION"), ("width=0.2", "mlp=FRACTION"),
])
def test_bad_structures_are_user_errors(text, message, folders):
    loaded, calib = _load(folders["llama"])
    with pytest.raises(UserError, match=message):
        shrink(loaded, calib, StructureSpec(**parse_structure(text)))
    assert loaded.model.config.intermediate_size == INTERMEDIATE


def _cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("structure, extra, message", [
    ("mlp=1.0", [], "mlp=FRACTION"), ("heads=0.25", [], "whole key/value groups"),
    ("mlp=0.5", ["--pattern", "2:4"], "--structure"), ("mlp=0.5", ["--method", "sparsegpt"], "cannot rank"),
    ("mlp=0.5", ["--quantize", "int4"], "--structure"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(structure, extra, message, folders, text_file,
                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _cli(["prune", str(folders["llama"]), "--calib", str(text_file), "--structure", structure,
                         "--out", str(out), "--nsamples", "2", "--seqlen", "32", *extra], capsys)
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_cli_refuses_an_unsupported_family(tmp_path, text_file, capsys):
    folder = tiny_model_folder("opt", tmp_path / "opt")
    code, _, err = _cli(["prune", str(folder), "--calib", str(text_file), "--structure", "mlp=0.25",
                         "--out", str(tmp_path / "out"), "--nsamples", "2", "--seqlen", "32"], capsys)
    assert code == 2 and "not supported yet" in err and not (tmp_path / "out").exists()


def test_flap_without_structure_is_refused(folders, text_file, tmp_path, capsys):
    code, _, err = _cli(["prune", str(folders["llama"]), "--calib", str(text_file), "--method", "flap",
                         "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "use it with --structure" in err and not (tmp_path / "out").exists()


def test_cli_shrinks_and_writes_a_smaller_folder(folders, text_file, tmp_path, capsys):
    out = tmp_path / "small"
    code, stdout, err = _cli(["prune", str(folders["llama"]), "--calib", str(text_file), "--structure", "mlp=0.25",
                              "--nsamples", "4", "--seqlen", "32", "--eval", str(text_file),
                              "--eval-windows", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "intermediate 128 -> 96" in stdout and "written to" in stdout
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 96
    report = json.loads((out / "sparsity.json").read_text())
    assert report["structure"]["criterion"] == "flap"          # the default criterion with --structure and report["structure"]["bias_compensation"]["mlp"]
