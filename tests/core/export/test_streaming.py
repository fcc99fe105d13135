"""Streaming from disk, activation spill and compute dtype: all must give exactly what the in-memory path gives."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from core.pruning.activations import ActivationBudget, ActivationStore
from core.models.architectures import find_layout
from core.data.calibration import CalibrationSet
from core.events import BlockStarted, Cancelled, CancelToken, Job, Message, Recorder
from core.formats.names import CALIBRATION, REPORT
from core.export.report import build_report
from core.export.folder import write_export
from core.models.loaded import LoadedModel
from core.pruning.pipeline import prune
from core.pruning.plan import PrunePlan
from core.formats.names import INDEX
from core.models.streaming import open_streaming
from core.export.streaming import prune_streaming

VOCAB = 96


def tiny_llama_folder(path, dtype=torch.float32, tie=False, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.save_pretrained(path)
    return path


def in_memory(folder) -> LoadedModel:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()
    return LoadedModel(model, None, str(folder), "folder", folder, find_layout(model))


def calibration(nsamples=6, seqlen=24) -> CalibrationSet:
    ids = torch.randint(0, VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(1))
    return CalibrationSet(ids, [], 0)


def folder_tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        if file.name != CALIBRATION:
            tensors.update(load_file(str(file)))
    return tensors


def pruning_report(folder) -> dict:
    report = json.loads((folder / REPORT).read_text())["pruning"]
    report.pop("seconds")
    for layer in report["layers"]:
        layer.pop("seconds")
    return report


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("method,pattern,dtype,tie", [
    ("wanda", "unstructured", torch.float32, False),
    ("sparsegpt", "2:4", torch.float32, True),
    ("sparsegpt", "unstructured", torch.float16, False),
])
def test_streaming_export_equals_in_memory_export(tmp_path, method, pattern, dtype, tie):
    folder = tiny_llama_folder(tmp_path / "model", dtype, tie)
    plan = PrunePlan.build(method=method, pattern=pattern, batch_size=4)
    calib = calibration()

    loaded = in_memory(folder)
    result = prune(loaded, calib, plan)
    write_export(loaded, tmp_path / "memory", build_report(loaded, result, calib), calib)
    streamed, path = prune_streaming(folder, calib, plan, tmp_path / "streamed")

    assert (path / INDEX).is_file()
    assert_same_tensors(folder_tensors(tmp_path / "memory"), folder_tensors(path))
    assert pruning_report(tmp_path / "memory") == pruning_report(path)
    assert torch.equal(load_file(str(path / CALIBRATION))["input_ids"], calib.input_ids)
    assert [l.sparsity for l in streamed.layers] == [l.sparsity for l in result.layers]
    assert all(l.sparsity == pytest.approx(0.5, abs=0.02) for l in streamed.layers)
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
    assert next(reloaded.parameters()).dtype == dtype
    with torch.no_grad():
        assert torch.equal(reloaded(calib.input_ids[:2]).logits, loaded.model(calib.input_ids[:2]).logits)


def test_streaming_holds_one_block_at_a_time(tmp_path):
    folder = tiny_llama_folder(tmp_path / "model")
    loaded = open_streaming(folder)
    blocks = loaded.layout.blocks
    assert all(p.is_meta for p in loaded.model.parameters())
    materialised = []

    def count(event):
        if isinstance(event, BlockStarted):
            materialised.append(sum(not next(b.parameters()).is_meta for b in blocks))

    prune_streaming(loaded, calibration(), PrunePlan.build(method="wanda"), tmp_path / "out", Job(count))
    assert materialised == [0, 0, 0]           # the previous block is gone before the next one is read
    assert all(p.is_meta for p in loaded.model.parameters())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_activations_spilled_to_disk_give_identical_results(tmp_path, method):
    folder = tiny_llama_folder(tmp_path / "model", torch.float16)
    plan = PrunePlan.build(method=method, batch_size=2)
    calib = calibration()
    reference = in_memory(folder)
    prune(reference, calib, plan)

    spilled, events = in_memory(folder), Recorder()
    prune(spilled, calib, plan, Job(events), memory_budget=1)
    assert any("kept on disk" in m.text for m in events.of(Message))
    assert_same_tensors(reference.model.state_dict(), spilled.model.state_dict())

    _, path = prune_streaming(folder, calib, plan, tmp_path / "streamed", memory_budget=1)
    streamed = folder_tensors(path)
    for name, tensor in streamed.items():
        assert torch.equal(tensor, reference.model.state_dict()[name]), name


def test_budget_spills_only_when_inputs_and_outputs_exceed_it():
    per_store = 1000
    assert not ActivationBudget(None, per_store).spill
    assert not ActivationBudget(2000, per_store).spill
    budget = ActivationBudget(1999, per_store)
    try:
        assert budget.spill
        store = budget.new_store()
        batches = [torch.randn(2, 5, 3).half(), torch.randn(1, 5, 3).half()]
        for batch in batches:
            store.append(batch)
        assert store.spilled and len(store) == 2
        assert all(torch.equal(store[i], batches[i]) for i in range(2))
        files = list(budget._folder.iterdir())
        assert len(files) == 2
        store.close()
        assert not any(f.exists() for f in files)
    finally:
        budget.close()


def test_in_memory_store_keeps_tensors():
    store = ActivationStore()
    tensor = torch.randn(2, 3)
    store.append(tensor)
    assert not store.spilled and store[0] is tensor


def test_cancel_during_streaming_leaves_no_output_folder(tmp_path):
    folder = tiny_llama_folder(tmp_path / "model")
    token = CancelToken()

    def cancel_at_second_block(event):
        if isinstance(event, BlockStarted) and event.index == 1:
            token.cancel()

    out = tmp_path / "exports" / "pruned"
    with pytest.raises(Cancelled):
        prune_streaming(folder, calibration(), PrunePlan.build(method="sparsegpt"), out,
                        Job(cancel_at_second_block, token))
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []


def test_cancel_in_memory_restores_weights_and_dtype(tmp_path):
    folder = tiny_llama_folder(tmp_path / "model", torch.float16)
    loaded = in_memory(folder)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    token = CancelToken()

    def cancel_at_third_block(event):
        if isinstance(event, BlockStarted) and event.index == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        prune(loaded, calibration(), PrunePlan.build(method="wanda"), Job(cancel_at_third_block, token))
    after = loaded.model.state_dict()
    assert_same_tensors(before, after)
    assert all(v.device.type == "cpu" for v in after.values())


def test_half_model_computes_in_float32_on_the_cpu_but_activations_stay_half(tmp_path):
    folder = tiny_llama_folder(tmp_path / "model", torch.float16)
    loaded = in_memory(folder)
    seen = []
    block = loaded.layout.blocks[1]
    handle = block.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, module.mlp.up_proj.weight.dtype)))
    try:
        prune(loaded, calibration(), PrunePlan.build(method="wanda", device="cpu"))
    finally:
        handle.remove()
    assert set(seen) == {(torch.float32, torch.float32)}
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float16}
