"""Opening models: folders, cached hub ids, pickle checkpoints through weights_only, and every bad path."""

import shutil

import pytest
import torch

from core.errors import UserError
from core.models.open import open_model
from tests.tiny_models import tiny_model, tiny_tokenizer


def test_a_folder_opens_with_its_tokenizer_and_layout(tiny_llama_folder):
    loaded = open_model(tiny_llama_folder)
    assert loaded.kind == "folder" and loaded.path == tiny_llama_folder and loaded.name == tiny_llama_folder.name
    assert not loaded.model.training
    assert loaded.context_length == loaded.model.config.max_position_embeddings
    assert loaded.layout.family == "Llama" and loaded.layout.prunable_parameters == 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 128 * 64)
    assert loaded.tokenizer("ab").input_ids == [1, *loaded.tokenizer.convert_tokens_to_ids(["a", "b"])]


def test_dtype_is_chosen_at_load(tiny_llama_folder):
    assert next(open_model(tiny_llama_folder, dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype 'float8'"):
        open_model(tiny_llama_folder, dtype="float8")


def test_a_cached_hub_id_opens_offline(tiny_llama_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_llama_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = open_model("tiny-org/tiny-llama")
    assert loaded.kind == "hub" and loaded.name == "tiny-org/tiny-llama"
    assert loaded.path == repo / "snapshots" / commit


def test_a_hub_id_missing_from_the_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"not in the local Hugging Face cache.*hf download nobody/no-such-model"):
        open_model("nobody/no-such-model")


def test_a_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        open_model(tmp_path / "missing")
    with pytest.raises(UserError, match="no such file or folder"):
        open_model("./not/here")


def test_a_folder_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="no config.json"):
        open_model(tmp_path)


def test_a_folder_with_config_but_no_weights(tiny_llama_folder, tmp_path):
    shutil.copy(tiny_llama_folder / "config.json", tmp_path / "config.json")
    with pytest.raises(UserError, match="no weights"):
        open_model(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_safetensors_file(tiny_llama_folder, tmp_path, damage):
    folder = tmp_path / "m"
    shutil.copytree(tiny_llama_folder, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x13\x37 not safetensors" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(UserError, match="could not read the model"):
        open_model(folder)


def test_a_random_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UserError, match="is a file but not a .gguf model"):
        open_model(path)


def folder_with_pickle(folder, payload):
    folder.mkdir()
    tiny_model("llama").config.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    torch.save(payload, folder / "pytorch_model.bin")
    return folder


def test_a_pickle_checkpoint_loads_through_weights_only(tmp_path):
    state = tiny_model("llama", seed=3).state_dict()
    loaded = open_model(folder_with_pickle(tmp_path / "m", state))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


class Payload:
    """Unpickling this runs code: exactly what weights_only refuses."""

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    payload = Payload()
    payload.marker = str(tmp_path / "pwned")
    folder = folder_with_pickle(tmp_path / "m", {"model.embed_tokens.weight": payload})
    with pytest.raises(UserError, match="could not read the model"):
        open_model(folder)
    assert not (tmp_path / "pwned").exists()
    torch.load(folder / "pytorch_model.bin", weights_only=False)    # the payload is live: unsafe loading runs it
    assert (tmp_path / "pwned").exists()


def test_a_folder_of_an_unknown_architecture(tiny_llama_folder, tmp_path):
    import json

    folder = tmp_path / "m"
    shutil.copytree(tiny_llama_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"], config["architectures"] = "made_up_family", ["MadeUpForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="^not supported yet: "):
        open_model(folder)
