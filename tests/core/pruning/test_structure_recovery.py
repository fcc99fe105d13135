"""Recovery of a shrunk model (`--structure` with `--recover`): every kept weight trains towards the unshrunk
block (blockwise) or model (e2e), and the export still loads in transformers with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from core.cli import main
from core.models.open import open_model
from core.pruning.structure.run import shrink
from core.pruning.structure.spec import StructureSpec
from core.recovery.options import RecoveryOptions

from tests.tiny_models import INTERMEDIATE, tiny_calibration, tiny_model_folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_model_folder("llama", tmp_path_factory.mktemp("llama"))


def _load(folder):
    loaded = open_model(folder)
    return loaded, tiny_calibration(loaded.tokenizer, nsamples=8, seqlen=32)


def _block_outputs(loaded, ids):
    """Every block's output on `ids`, caught by forward hooks."""
    seen = []
    handles = [b.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
               for b in loaded.layout.blocks]
    with torch.no_grad():
        loaded.model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return seen


def _relative_errors(outputs, dense):
    return [float((o - d).pow(2).sum() / d.pow(2).sum()) for o, d in zip(outputs, dense)]


def test_blockwise_recovery_lowers_every_shrunk_blocks_output_error(llama):
    errors, results = {}, {}
    for mode in ("none", "blockwise"):
        loaded, calib = _load(llama)
        dense = _block_outputs(loaded, calib.input_ids)
        options = RecoveryOptions(mode, epochs=8, learning_rate=3e-3, batch_windows=2)
        results[mode] = shrink(loaded, calib, StructureSpec(mlp=0.5, heads=0.5), recovery=options)
        errors[mode] = _relative_errors(_block_outputs(loaded, calib.input_ids), dense)
        assert loaded.model.config.intermediate_size == INTERMEDIATE // 2
    # block 0 sees the same inputs either way, so its error is the block's own; the last one's is the model's
    assert errors["blockwise"][0] < 0.7 * errors["none"][0]
    assert errors["blockwise"][-1] < errors["none"][-1]
    curves = results["blockwise"].curves
    assert [c.block for c in curves] == [0, 1] and all(c.after < c.before for c in curves)
    assert curves[0].before == pytest.approx(errors["none"][0], rel=1e-3)   # the curve measures what we measure
    assert results["none"].curves == []


def test_e2e_recovery_lowers_the_kl_to_the_unshrunk_model(llama):
    loaded, calib = _load(llama)
    result = shrink(loaded, calib, StructureSpec(mlp=0.5), recovery=RecoveryOptions("e2e", epochs=4,
                                                                                       learning_rate=3e-4))
    (curve,) = result.curves
    assert curve.block == -1 and curve.after < curve.before
    assert all(not p.requires_grad or p.grad is None for p in loaded.model.parameters())


def test_recovered_export_loads_in_transformers_with_equal_logits(llama, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "small"
    code = main(["prune", str(llama), "--calib", str(text_file), "--structure", "mlp=0.25,heads=0.5",
                 "--recover", "blockwise", "--recover-epochs", "2", "--nsamples", "4", "--seqlen", "32",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "sparsity.json").read_text())["structure"]
    assert report["recovery"]["mode"] == "blockwise" and len(report["recovery_blocks"]) == 2
    assert all(b["after"] < b["before"] for b in report["recovery_blocks"])
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    dense = AutoModelForCausalLM.from_pretrained(llama).eval()
    small, _ = _load(out)
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, small.model(input_ids=ids).logits)
        assert not torch.equal(reloaded(input_ids=ids).logits, dense(input_ids=ids).logits)
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == INTERMEDIATE * 3 // 4
