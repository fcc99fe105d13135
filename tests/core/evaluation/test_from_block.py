"""Perplexity from block k equals a full pass whenever blocks before k are the ones recorded, for every
supported family's block signature, and the model is left as it was."""

import pytest
import torch

from core.evaluation.from_block import BlockInputs, cache_bytes
from core.evaluation.perplexity import perplexity
from core.models.architectures import find_layout
from tests.tiny_models import TINY_VOCAB, tiny_model

FAMILIES = ["llama", "qwen2", "gemma", "phi3", "opt", "gpt2", "gpt_neox", "mistral"]


def windows(n=3, seqlen=24, seed=0):
    return torch.randint(3, TINY_VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pass_from_block_k_equals_the_full_pass_after_block_k_changes(family):
    model = tiny_model(family)
    blocks = find_layout(model).blocks
    ids = windows()
    recorded = BlockInputs.record(model, blocks, ids, device="cpu")
    assert recorded.dense.ppl == pytest.approx(perplexity(model, ids, device="cpu").ppl, rel=1e-6)
    assert len(recorded.inputs) == len(blocks) and all(len(per) == ids.shape[0] for per in recorded.inputs)
    originals = list(blocks)
    for k in range(len(blocks)):
        weights = [p for p in blocks[k].parameters() if p.dim() == 2]
        saved = [p.detach().clone() for p in weights]
        with torch.no_grad():
            for p in weights:
                p.mul_(torch.rand_like(p) > 0.5)     # half the block's weights gone
        full = perplexity(model, ids, device="cpu", batch_size=2)
        started_late = recorded.perplexity_from(model, k, ids, device="cpu")
        assert started_late.ppl == pytest.approx(full.ppl, rel=1e-5)
        assert started_late.ppl != pytest.approx(recorded.dense.ppl, rel=1e-3)    # the change did show
        with torch.no_grad():
            for p, raw in zip(weights, saved):
                p.copy_(raw)
    assert list(blocks) == originals                  # every pass-through was put back


def test_a_change_before_block_k_is_not_seen_from_block_k():
    """What the cache buys is also its contract: blocks before k are taken as recorded."""
    model = tiny_model("llama")
    blocks = find_layout(model).blocks
    ids = windows()
    recorded = BlockInputs.record(model, blocks, ids, device="cpu")
    with torch.no_grad():
        for p in blocks[0].parameters():
            p.zero_()
    assert recorded.perplexity_from(model, 1, ids, device="cpu").ppl == pytest.approx(recorded.dense.ppl, rel=1e-6)


def test_cache_size_counts_every_block_and_window():
    ids = windows(n=8, seqlen=512)
    assert cache_bytes(ids, 576, 30, torch.float32) == 8 * 512 * 576 * 30 * 4
    assert cache_bytes(ids, 576, 30, torch.bfloat16) == 8 * 512 * 576 * 30 * 2
