"""Export: atomic, never overwriting by accident, with the run's report and calibration windows beside the weights."""

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.pruning import pipeline
from core.errors import UserError
from core.evaluation.perplexity import perplexity
from core.formats.names import CALIBRATION, REPORT
from core.export.report import build_report
from core.export.folder import write_export
from core.models.open import open_model
from core.pruning.plan import PrunePlan
from tests.tiny_models import tiny_calibration


@pytest.fixture(scope="module")
def pruned(tiny_llama_folder):
    loaded = open_model(tiny_llama_folder)
    calib = tiny_calibration(loaded.tokenizer, nsamples=6, seqlen=20, seed=4)
    windows = calib.input_ids[:2]
    dense = perplexity(loaded.model, windows, device="cpu")
    result = pipeline.prune(loaded, calib, PrunePlan.build(method="wanda", sparsity=0.5, device="cpu",
                                                           ignore=("model.layers.1.mlp.down_proj",)))
    ppl = perplexity(loaded.model, windows, device="cpu")
    report = build_report(loaded, result, calib, dense, ppl, {"prune": result.seconds})
    return loaded, calib, result, report


def test_export_writes_a_plain_transformers_folder_with_report_and_windows(pruned, tmp_path, tiny_llama_folder):
    loaded, calib, result, report = pruned
    out = write_export(loaded, tmp_path / "out", report, calib)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", REPORT, CALIBRATION} <= names
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(out / CALIBRATION))["input_ids"], calib.input_ids)
    assert load_file(str(out / CALIBRATION))["input_ids"].shape == (6, 20)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    saved = json.loads((out / REPORT).read_text())
    import transformers

    assert saved["tool"]["name"] == "compression-studio"
    assert saved["versions"]["torch"] == torch.__version__ and saved["versions"]["transformers"] == transformers.__version__
    source_hash = hashlib.sha256((tiny_llama_folder / "model.safetensors").read_bytes()).hexdigest()
    assert saved["source"]["model"] == str(tiny_llama_folder) and saved["source"]["weights_sha256"] == source_hash
    pruning = saved["pruning"]
    assert pruning["method"] == "wanda" and pruning["sparsity"] == 0.5 and pruning["pattern"] == "unstructured"
    assert pruning["ignore"] == ["model.layers.1.mlp.down_proj"] and pruning["device"] == "cpu"
    assert pruning["achieved_sparsity"] == pytest.approx(result.sparsity)
    assert len(pruning["layers"]) == 13
    layer = pruning["layers"][0]
    assert {"name", "target_sparsity", "sparsity", "error", "seconds"} <= set(layer)
    assert layer["target_sparsity"] == 0.5 and layer["sparsity"] == 0.5 and 0 < layer["error"] < 1
    assert pruning["skipped"] == [{"name": "model.layers.1.mlp.down_proj", "reason": "in the ignore list"}]
    assert saved["calibration"] == {"files": [], "text_field": "text", "tokens_found": 0, "nsamples": 6, "seqlen": 20, "seed": 4}
    assert saved["perplexity"]["dense"]["ppl"] == report["perplexity"]["dense"]["ppl"] > 1
    assert saved["perplexity"]["pruned"]["ppl"] != saved["perplexity"]["dense"]["ppl"]
    assert saved["perplexity"]["pruned"]["tokens"] == 2 * 19
    assert saved["dtype"] == "float32" and saved["durations_seconds"]["prune"] == result.seconds


def test_calibration_files_are_listed_with_their_hash(tiny_llama_folder, text_file, tmp_path):
    from core.data.calibration import load_calibration

    loaded = open_model(tiny_llama_folder)
    calib = load_calibration([text_file], loaded.tokenizer, nsamples=2, seqlen=16)
    out = write_export(loaded, tmp_path / "out", build_report(loaded, None, calib), calib)
    files = json.loads((out / REPORT).read_text())["calibration"]["files"]
    assert files == [{"path": str(text_file.resolve()), "sha256": hashlib.sha256(text_file.read_bytes()).hexdigest(),
                      "tokens": calib.tokens_found}]


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_an_interrupted_export_leaves_nothing_behind(pruned, tmp_path, monkeypatch, failure):
    loaded, calib, _, report = pruned
    real_save = loaded.model.save_pretrained

    def save_then_fail(folder, *args, **kwargs):
        real_save(folder, *args, **kwargs)       # weights written, then the export dies
        raise failure

    monkeypatch.setattr(loaded.model, "save_pretrained", save_then_fail)
    with pytest.raises(type(failure)):
        write_export(loaded, tmp_path / "out", report, calib)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_refused_then_replaced_with_overwrite(pruned, tmp_path):
    loaded, calib, _, report = pruned
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        write_export(loaded, out, report, calib)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_export(loaded, out, report, calib, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]      # no temporary or old folder left


def test_a_file_in_the_way_is_refused_even_with_overwrite(pruned, tmp_path):
    loaded, calib, _, report = pruned
    (tmp_path / "out").write_text("a file")
    with pytest.raises(UserError, match="is a file"):
        write_export(loaded, tmp_path / "out", report, calib, overwrite=True)



def test_tied_embeddings_survive_export_and_a_new_parent_folder_is_created(tmp_path):
    from tests.tiny_models import tiny_model_folder

    loaded = open_model(tiny_model_folder("llama", tmp_path / "tied", tie_word_embeddings=True))
    assert loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight
    calib = tiny_calibration(loaded.tokenizer, nsamples=4, seqlen=16)
    result = pipeline.prune(loaded, calib, PrunePlan.build(method="sparsegpt", pattern="4:8"))
    assert not (loaded.model.get_input_embeddings().weight == 0).any()
    out = write_export(loaded, tmp_path / "new" / "deeper" / "out", build_report(loaded, result, calib), calib)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=calib.input_ids).logits, loaded.model(input_ids=calib.input_ids).logits)
