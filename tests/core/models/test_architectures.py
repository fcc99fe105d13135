"""Every supported family end to end on a tiny random model: inventory, pruning, export, reload, identical logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.pruning import pipeline
from core.models.architectures import SUPPORTED, Conv1D, is_prunable_linear, weight_matrix
from core.errors import UserError
from core.export.report import build_report
from core.export.folder import write_export
from core.patterns import Pattern, follows_pattern
from core.models.open import open_model
from core.pruning.plan import PrunePlan
from tests.tiny_models import LAYERS, tiny_calibration, tiny_model_folder


@pytest.fixture(scope="module", params=sorted(SUPPORTED))
def family_folder(request, tmp_path_factory):
    return request.param, tiny_model_folder(request.param, tmp_path_factory.mktemp(request.param))


def expected_linears(model, blocks_path, index):
    """(name inside the block, [out, in]) of every linear layer of block `index`, read off the modules themselves."""
    prefix = f"{blocks_path}.{index}."
    found = []
    for name, module in model.named_modules():
        if name.startswith(prefix) and is_prunable_linear(module):
            out_f, in_f = (module.nf, module.weight.shape[0]) if isinstance(module, Conv1D) else \
                (module.out_features, module.in_features)
            found.append((name[len(prefix):], (out_f, in_f)))
    return found


def test_inventory_lists_every_block_and_its_linear_layers(family_folder):
    family, folder = family_folder
    loaded = open_model(folder)
    layout = loaded.layout
    assert layout.family == SUPPORTED[family]
    assert len(layout.blocks) == len(layout.inventory) == LAYERS
    for index, block in enumerate(layout.inventory):
        assert [(l.name, l.shape) for l in block.linears] == expected_linears(loaded.model, layout.blocks_path, index)
        assert all(l.full_name == f"{layout.blocks_path}.{index}.{l.name}" for l in block.linears)
        assert len(block.linears) >= 4
    names = [l.full_name for b in layout.inventory for l in b.linears]
    assert not any("lm_head" in n or "embed" in n or "wte" in n for n in names)


@pytest.mark.parametrize("method,pattern,sparsity", [("wanda", "2:4", None), ("sparsegpt", "unstructured", 0.5)])
def test_prune_export_reload_gives_identical_logits(family_folder, tmp_path, method, pattern, sparsity):
    family, folder = family_folder
    loaded = open_model(folder)
    calib = tiny_calibration(loaded.tokenizer, nsamples=8, seqlen=32)
    dense_weights = {name: weight_matrix(m).clone() for name, m in loaded.model.named_modules() if is_prunable_linear(m)}
    result = pipeline.prune(loaded, calib, PrunePlan.build(method=method, pattern=pattern, sparsity=sparsity))

    assert result.skipped == [] and len(result.layers) == sum(len(b.linears) for b in loaded.layout.inventory)
    for r in result.layers:
        weight = weight_matrix(loaded.model.get_submodule(r.name))
        assert r.sparsity == float((weight == 0).sum()) / weight.numel()
        if pattern == "2:4":
            assert follows_pattern(weight, Pattern(2, 4))
            assert ((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) == 2).all()
        else:
            assert r.sparsity == pytest.approx(0.5, abs=0.02)
            assert not torch.equal(weight[weight != 0], dense_weights[r.name][weight != 0])   # SparseGPT updates
    head = loaded.model.get_output_embeddings().weight
    assert not (head == 0).any()                                                          # lm_head stays dense

    out = write_export(loaded, tmp_path / "out", build_report(loaded, result, calib), calib)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        expected = loaded.model(input_ids=calib.input_ids[:3]).logits
        actual = reloaded(input_ids=calib.input_ids[:3]).logits
    assert torch.equal(actual, expected)


def test_an_unsupported_family_is_named_not_crashed(tmp_path):
    folder = tiny_model_folder("bloom", tmp_path / "bloom")
    with pytest.raises(UserError) as info:
        open_model(folder)
    message = str(info.value)
    assert message.startswith("not supported yet:")
    assert "BloomForCausalLM" in message and "Llama" in message
