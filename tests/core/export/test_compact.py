"""The compact 2:4 format: exact round trips, folders transformers loads again, CUTLASS metadata."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.bench_fixtures import VOCAB, tiny_llama
from core.export import compact
from core.formats import compact24
from core.kernels import semi_structured
from core.data.calibration import CalibrationSet
from core.errors import UserError
from core.export.report import build_report
from core.export.folder import write_export
from core.patterns import Pattern, follows_pattern
from core.pruning.masks import nm_mask
from core.models.open import open_model
from core.pruning.pipeline import prune
from core.pruning.plan import PrunePlan

TWO_FOUR = Pattern(2, 4)
INT = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def random_two_four(rows, cols, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    return w.masked_fill(nm_mask(w.abs(), TWO_FOUR), 0).to(dtype)


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(INT[a.dtype]), b.view(INT[b.dtype]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 128), (3, 12), (5, 4), (32, 1540)])
def test_pack_round_trips_bit_for_bit(dtype, shape):
    w = random_two_four(*shape, dtype)
    values, positions = compact24.pack(w)
    assert values.shape == (shape[0], shape[1] // 2) and values.dtype == dtype
    assert positions.dtype == torch.uint8 and positions.shape == (shape[0], (shape[1] + 7) // 8)
    assert same_bits(compact24.unpack(values, positions, shape[1]), w)


def test_groups_with_fewer_than_two_non_zeros_and_negative_zero_round_trip():
    w = random_two_four(8, 16, torch.float16)
    w[0, :4] = 0                        # an empty group
    w[1, 4:8] = torch.tensor([0, 0, 0, 3.0])
    w[2, 0:4] = torch.tensor([-0.0, 0, 2.0, 0])   # a kept -0.0 (bits non-zero) keeps its sign
    back = compact24.unpack(*compact24.pack(w), 16)
    assert same_bits(back, w)


def test_positions_are_two_bits_each_four_per_byte():
    w = torch.zeros(1, 8, dtype=torch.float16)
    w[0, [1, 3, 4, 6]] = 1.0            # group 0 keeps (1, 3), group 1 keeps (0, 2)
    values, positions = compact24.pack(w)
    assert positions.tolist() == [[(1 | 3 << 2) | (0 | 2 << 2) << 4]]
    assert values.tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_a_weight_that_is_not_two_four_is_refused():
    w = torch.ones(4, 8)
    assert not compact24.packable(w)
    with pytest.raises(ValueError):
        compact24.pack(w)


def test_compact_bytes_are_nine_sixteenths_of_fp16():
    assert compact24.compact_bytes((3072, 10240), torch.float16) / (3072 * 10240 * 2) == pytest.approx(9 / 16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cutlass_metadata_from_positions_equals_torchs_conversion_of_the_dense_weight(dtype):
    from torch.sparse._semi_structured_conversions import (sparse_semi_structured_from_dense_cutlass,
                                                           sparse_semi_structured_to_dense_cutlass)

    w = random_two_four(64, 256, dtype, seed=3)
    values, positions = compact24.pack(w)
    packed, meta = sparse_semi_structured_from_dense_cutlass(w)
    assert torch.equal(packed, values) and torch.equal(meta, semi_structured.cutlass_meta(positions, 256, dtype))
    w[:, :8] = 0                        # groups with fewer non-zeros: another but equally valid encoding
    values, positions = compact24.pack(w)
    assert same_bits(sparse_semi_structured_to_dense_cutlass(values, semi_structured.cutlass_meta(positions, 256, dtype)), w)


def pruned_export(tmp_path):
    loaded = tiny_llama()
    calib = CalibrationSet(torch.randint(1, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0)), [], 0)
    result = prune(loaded, calib, PrunePlan.build(method="magnitude", pattern="2:4", device="cpu"))
    dense = write_export(loaded, tmp_path / "dense", build_report(loaded, result, calib), calib)
    return loaded, result, dense


def test_folder_round_trip_restores_identical_weights_that_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    loaded, result, dense = pruned_export(tmp_path)
    summary = compact.write_compact(dense, tmp_path / "compact")
    assert summary.layers == len(result.layers) == 14
    assert compact24.is_compact(summary.out) and not list(summary.out.glob("model.safetensors"))
    report = json.loads((summary.out / "sparsity.json").read_text())
    assert report["storage"]["format"] == "compact-2:4" and report["storage"]["compact_layers"] == 14
    assert (summary.out / "calibration.safetensors").is_file() and (summary.out / "tokenizer.json").is_file()

    restored = compact.unpack_folder(summary.out, tmp_path / "restored")
    before, after = load_file(dense / "model.safetensors"), load_file(restored / "model.safetensors")
    assert before.keys() == after.keys() and all(same_bits(before[k], after[k]) for k in before)
    assert json.loads((restored / "sparsity.json").read_text()) == json.loads((dense / "sparsity.json").read_text())

    model = AutoModelForCausalLM.from_pretrained(restored).eval()
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded.model(ids).logits)


def test_open_model_reads_a_compact_folder_directly(tmp_path):
    loaded, _, dense = pruned_export(tmp_path)
    summary = compact.write_compact(dense, tmp_path / "compact")
    reopened = open_model(summary.out)
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(reopened.model(ids).logits, loaded.model(ids).logits)
    assert reopened.model.lm_head.weight is reopened.model.model.embed_tokens.weight
    q = reopened.model.model.layers[0].self_attn.q_proj.weight
    assert follows_pattern(q, TWO_FOUR)


def test_plain_transformers_refuses_a_compact_folder_instead_of_loading_garbage(tmp_path):
    from transformers import AutoModelForCausalLM

    _, _, dense = pruned_export(tmp_path)
    summary = compact.write_compact(dense, tmp_path / "compact")
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(summary.out)


def test_bad_inputs_are_user_errors(tmp_path):
    _, _, dense = pruned_export(tmp_path)
    with pytest.raises(UserError, match="not a compact"):
        compact.unpack_folder(dense, tmp_path / "x")
    with pytest.raises(UserError, match="already exists"):
        compact.write_compact(dense, dense)
    with pytest.raises(UserError, match="not an exported model folder"):
        compact.write_compact(tmp_path, tmp_path / "y")


def test_demo_model_layers_round_trip_after_a_two_four_prune():
    from core.pruning.methods import METHODS

    loaded = open_model("demo")
    for block in (0, len(loaded.layout.blocks) - 1):
        for name, layer in loaded.layout.linears(block).items():
            pruned = METHODS["magnitude"].prune(layer.weight.detach().float(), None, 0.5, TWO_FOUR).weight
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                w = pruned.to(dtype)
                assert same_bits(compact24.unpack(*compact24.pack(w), w.shape[1]), w), (block, name, dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cutlass_tensor_built_from_compact_multiplies_like_dense():
    from core.kernels import sparse_rules

    capability = sparse_rules.device_capability()
    ok, reason = sparse_rules.check((128, 256), torch.float16, sparse_rules.CUTLASS, capability)
    if not ok:
        pytest.skip(reason)
    w = random_two_four(128, 256, torch.float16).cuda()
    values, positions = compact24.pack(w.cpu())
    sparse = semi_structured.cutlass_from_compact(values.cuda(), positions, 256)
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    ref = torch.nn.functional.linear(x.float(), w.float())
    got = torch.nn.functional.linear(x, sparse).float()
    assert float((got - ref).norm() / ref.norm()) < 1e-2


def test_semi_structured_weights_without_cuda_leave_every_layer_with_its_reason(tmp_path):
    loaded, _, dense = pruned_export(tmp_path)
    summary = compact.write_compact(dense, tmp_path / "compact")
    reopened = open_model(summary.out)
    before = {k: v.clone() for k, v in reopened.model.state_dict().items()}
    outcome = semi_structured.semi_structured_weights(summary.out, reopened.model, "cpu")
    assert len(outcome) == 14 and all("no CUDA device" in why for why in outcome.values())
    assert all(torch.equal(before[k], v) for k, v in reopened.model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["cutlass", "cusparselt"])
def test_semi_structured_weights_from_compact_match_the_dense_model_on_cuda(tmp_path, backend):
    from core.kernels import sparse_rules

    capability = sparse_rules.device_capability()
    why = sparse_rules.available_backends(capability)[backend]
    if why:
        pytest.skip(why)
    loaded, _, dense = pruned_export(tmp_path)
    summary = compact.write_compact(dense, tmp_path / "compact")
    model = open_model(summary.out, dtype="float16").model.cuda()
    ids = torch.randint(1, VOCAB, (1, 32), generator=torch.Generator().manual_seed(4)).cuda()
    with torch.no_grad():
        reference = model(ids).logits.float()
        outcome = semi_structured.semi_structured_weights(summary.out, model, "cuda", backend)
        assert sum(1 for why in outcome.values() if not why) > 0, outcome
        got = model(ids).logits.float()
    assert float((got - reference).norm() / reference.norm()) < 2e-2
