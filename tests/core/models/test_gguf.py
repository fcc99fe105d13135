"""A real .gguf file opens directly, and gives the same model as the converted demo folder."""

import pytest
import torch

from core.models.demo import ensure_demo_gguf
from core.models.open import open_model


@pytest.mark.slow
def test_gguf_file_opens_and_matches_the_converted_demo_folder():
    gguf = ensure_demo_gguf()
    from_gguf = open_model(gguf)
    from_folder = open_model("demo")
    assert from_gguf.kind == "gguf" and from_gguf.layout.family == "Llama"
    assert len(from_gguf.layout.inventory) == len(from_folder.layout.inventory) == 30
    ids = from_folder.tokenizer("The tower is 324 metres tall", return_tensors="pt").input_ids
    assert torch.equal(ids, from_gguf.tokenizer("The tower is 324 metres tall", return_tensors="pt").input_ids)
    with torch.no_grad():
        a = from_gguf.model(ids).logits
        b = from_folder.model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    # the GGUF-loaded model must export like any other: transformers refuses GGUF-marked models otherwise
    assert getattr(from_gguf.model, "hf_quantizer", None) is None
