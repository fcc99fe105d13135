"""A hub id opens from the local Hugging Face cache, offline; one that is not cached says what to do."""

import pytest
import torch

from core.data.calibration import load_calibration
from core.errors import UserError
from core.models.open import open_model


def _cache_tiny_model(cache, repo_id: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    model.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return model


def test_cached_hub_id_opens_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    original = _cache_tiny_model(tmp_path, "someone/tiny-gpt2")
    loaded = open_model("someone/tiny-gpt2")
    assert loaded.kind == "hub" and loaded.layout.family == "GPT-2"
    torch.testing.assert_close(loaded.model.transformer.h[0].attn.c_attn.weight, original.transformer.h[0].attn.c_attn.weight)
    # it ships no tokenizer: it opens for inspection, and calibration explains what is missing
    assert loaded.tokenizer is None
    text = tmp_path / "calib.txt"
    text.write_text("some calibration text " * 50)
    with pytest.raises(UserError, match="no tokenizer files"):
        load_calibration([text], loaded.tokenizer, nsamples=2, seqlen=8)


def test_hub_id_not_in_cache_says_how_to_get_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        open_model("nobody/never-downloaded")
