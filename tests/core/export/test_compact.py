"""The compact 2:4 format: exact round trips (float values and quantized codes), folders transformers loads
again, CUTLASS metadata, old and corrupted files."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

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
from core.models import compact as compact_model
from core.models.architectures import set_weight_matrix, weight_matrix
from core.models.open import open_model
from core.quantization.grid import Grid
from core.quantization.rtn import round_to_nearest
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


# ---- version 2: quantized layers stored as integer codes ----

def rtn_weight(rows, cols, bits, symmetric, group, dtype=torch.float16, two_four=True, seed=0):
    """A weight rounded to nearest (2:4 pruned first unless `two_four` is False) in `dtype`, and its record."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) + (0.3 if not symmetric else 0.0)   # asymmetric: an offset range
    pruned = nm_mask(w.abs(), TWO_FOUR) if two_four else None
    q, record = round_to_nearest(w, Grid(bits, symmetric, dtype), group, pruned)
    return q.to(dtype), record


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n", [1, 7, 64, 129])
def test_codes_pack_and_unpack_exactly(bits, n):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(lo, hi + 1, (5, n), generator=torch.Generator().manual_seed(n), dtype=torch.int8)
    codes[0, 0], codes[-1, -1] = lo, hi
    packed = compact24.pack_codes(codes, bits)
    assert packed.shape == ((5, (n + 1) // 2) if bits == 4 else (5, n))
    assert packed.dtype == (torch.uint8 if bits == 4 else torch.int8)
    assert torch.equal(compact24.unpack_codes(packed, bits, n), codes)
    with pytest.raises(ValueError):
        compact24.pack_codes(codes.to(torch.int16) + (hi + 1 - lo), bits)       # out of range


def test_int4_codes_are_two_per_byte_low_nibble_first():
    packed = compact24.pack_codes(torch.tensor([[-8, 7, -1]], dtype=torch.int8), 4)
    assert packed.tolist() == [[0x8 | 0x7 << 4, 0xF]]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group,cols", [(32, 128), (64, 192), (32, 160), (None, 96)])   # 4, 3, 5 groups, per channel
@pytest.mark.parametrize("two_four", [True, False])
def test_quantized_weights_encode_as_codes_and_decode_bit_for_bit(bits, symmetric, group, cols, two_four):
    group = group or cols
    w, record = rtn_weight(12, cols, bits, symmetric, group, two_four=two_four, seed=bits + cols)
    codes = record.codes(w)
    assert same_bits(record.dequantize(codes).to(w.dtype), w)
    parts, info = compact24.encode_quantized(w, codes, bits, group, record.scale, record.zero)
    assert info["sparse"] is two_four and info["symmetric"] is symmetric and info["dtype"] == "float16"
    assert set(parts) == set(compact24.quantized_parts(info))
    n = cols // 2 if two_four else cols
    assert torch.equal(compact24.unpack_codes(parts[compact24.CODES], bits, n),
                       torch.gather(codes.reshape(12, -1, 4), 2, compact24.kept_positions(w)).reshape(12, n)
                       if two_four else codes)
    assert torch.equal(parts[compact24.SCALE], record.scale) and parts[compact24.SCALE].shape == (12, cols // group)
    back = compact24.decode_quantized(parts, {**info, "shape": [12, cols], "transposed": False})
    assert same_bits(back, w)


@pytest.mark.parametrize("group,bits_per_weight", [(64, 3.25), (128, 3.125)])
def test_two_four_int4_bits_per_weight_with_fp16_scales(group, bits_per_weight):
    w, record = rtn_weight(256, 1024, 4, True, group)
    parts, _ = compact24.encode_quantized(w, record.codes(w), 4, group, record.scale, record.zero)
    stored = sum(p.numel() * p.element_size() for p in parts.values())
    assert 8 * stored / w.numel() == bits_per_weight == compact24.quantized_bits_per_weight(4, group)
    assert compact24.quantized_bits_per_weight(4, group, symmetric=False) == bits_per_weight + 8 / group


def quantize(loaded, bits, symmetric, group=None, dtype=torch.float16, only=lambda name: True):
    """RTN every (chosen) linear layer of `loaded` in place; its records by full module name."""
    records = {}
    for block in loaded.layout.inventory:
        for info in block.linears:
            if not only(info.name):
                continue
            layer = loaded.model.get_submodule(info.full_name)
            w = weight_matrix(layer).detach().float()
            q, records[info.full_name] = round_to_nearest(w, Grid(bits, symmetric, dtype), group or w.shape[1], w == 0)
            set_weight_matrix(layer, q)
    return records


def tensor_bytes(file):
    """Stored bytes of every tensor of a safetensors file, read from its header."""
    raw = file.read_bytes()
    header = json.loads(raw[8: 8 + struct.unpack("<Q", raw[:8])[0]])
    return {name: end - start for name, entry in header.items() if name != "__metadata__"
            for start, end in [entry["data_offsets"]]}


def quantized_two_four_export(tmp_path, bits=4, symmetric=True, group=32):
    loaded = tiny_llama()
    calib = CalibrationSet(torch.randint(1, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0)), [], 0)
    result = prune(loaded, calib, PrunePlan.build(method="magnitude", pattern="2:4", device="cpu"))
    for param in loaded.model.parameters():    # not .half(): the rotary buffers stay float32, as when loaded
        param.data = param.data.to(torch.float16)
    records = quantize(loaded, bits, symmetric, group)
    summary = compact.export_compact(loaded, tmp_path / "compact", build_report(loaded, result, calib), calib,
                                     quantized=records)
    return loaded, records, summary


def test_two_four_int4_export_stores_codes_and_unpacks_to_the_in_memory_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    loaded, records, summary = quantized_two_four_export(tmp_path)
    assert summary.layers == summary.quantized_layers == len(records) == 14 and summary.kept_float == ()
    file = summary.out / "model.compact.safetensors"
    with compact24.safe_open(str(file), "pt") as reader:
        meta = reader.metadata()
    assert meta["version"] == "2" and json.loads(meta["layers"]) == {}
    coded = json.loads(meta["quantized"])
    assert set(coded) == {f"{name}.weight" for name in records}
    assert all(e["bits"] == 4 and e["group_size"] == 32 and e["symmetric"] and e["sparse"] and not e["transposed"]
               for e in coded.values())

    sizes, linear_bytes, fp16_bytes = tensor_bytes(file), 0, 0
    for base, entry in coded.items():
        linear_bytes += sum(size for name, size in sizes.items() if name.startswith(base + "::"))
        fp16_bytes += entry["shape"][0] * entry["shape"][1] * 2
    assert linear_bytes <= 0.22 * fp16_bytes and linear_bytes == summary.quantized_bytes
    assert summary.bits_per_weight == 8 * linear_bytes / (fp16_bytes / 2) == pytest.approx(3.5)
    storage = json.loads((summary.out / "sparsity.json").read_text())["storage"]
    assert storage["quantized_layers"] == 14 and "integer codes" in storage["note"]

    restored = compact.unpack_folder(summary.out, tmp_path / "restored")
    state, memory = load_file(restored / "model.safetensors"), loaded.model.state_dict()
    assert all(same_bits(state[k], memory[k]) for k in state) and "model.layers.0.mlp.up_proj.weight" in state
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    model = AutoModelForCausalLM.from_pretrained(restored, dtype=torch.float16).eval()
    reopened, _ = compact_model.load_model(summary.out, torch.float16)
    with torch.no_grad():
        expected = loaded.model(ids).logits
        assert torch.equal(model(ids).logits, expected) and torch.equal(reopened(ids).logits, expected)
    assert follows_pattern(reopened.model.layers[1].mlp.down_proj.weight, TWO_FOUR)


def test_mixed_folder_float_two_four_codes_and_dense_codes(tmp_path):
    _, _, dense = pruned_export(tmp_path)           # every linear layer 2:4 (float32)
    loaded = open_model(dense)
    records = quantize(loaded, 8, False, 64, torch.float32, only=lambda name: name.startswith("mlp."))
    attn = loaded.model.model.layers[0].self_attn.q_proj
    w = weight_matrix(attn).detach().float() + 0.01                  # no longer 2:4: dense codes
    q, records["model.layers.0.self_attn.q_proj"] = round_to_nearest(w, Grid(4, True, torch.float32), 64)
    set_weight_matrix(attn, q)
    records["lm_head"] = records["model.layers.0.mlp.up_proj"]        # tied: not in the file, stays float
    mixed = write_export(loaded, tmp_path / "mixed", {"pruning": {"layers": []}})
    summary = compact.write_compact(mixed, tmp_path / "compact", quantized=records)
    # 2:4: 6 MLP weights as codes and 7 attention weights as float values; q_proj of block 0 as dense codes
    assert summary.quantized_layers == 7 and summary.layers == 6 + 7 and summary.kept_float == ("lm_head",)
    with compact24.safe_open(str(summary.out / "model.compact.safetensors"), "pt") as reader:
        layers, coded = compact24.file_layers(reader.metadata())
    assert len(layers) == 7 and len(coded) == 7
    assert coded["model.layers.0.self_attn.q_proj.weight"]["sparse"] is False
    assert not any(coded[f"model.layers.1.mlp.{p}.weight"]["symmetric"] for p in ("up_proj", "gate_proj", "down_proj"))
    restored = compact.unpack_folder(summary.out, tmp_path / "restored")
    before, after = load_file(mixed / "model.safetensors"), load_file(restored / "model.safetensors")
    assert before.keys() == after.keys() and all(same_bits(before[k], after[k]) for k in before)
    outcome = semi_structured.semi_structured_weights(summary.out, open_model(summary.out).model, "cpu")
    attention = {f"model.layers.{b}.self_attn.{p}_proj" for b in (0, 1) for p in "qkvo"}
    assert set(outcome) == attention - {"model.layers.0.self_attn.q_proj"}     # coded layers stay dense there


def test_records_that_do_not_reproduce_the_weight_stay_float(tmp_path):
    _, _, dense = pruned_export(tmp_path)
    loaded = open_model(dense)
    records = quantize(open_model(dense), 4, True, 32, torch.float32)     # records of another copy: not applied
    summary = compact.write_compact(write_export(loaded, tmp_path / "d2", {}), tmp_path / "c", quantized=records)
    assert summary.quantized_layers == 0 and len(summary.kept_float) == 14 and summary.layers == 14


def test_gpt2_conv1d_layers_are_stored_transposed_and_come_back_exactly(tmp_path):
    from tests.tiny_models import tiny_model_folder

    loaded = open_model(tiny_model_folder("gpt2", tmp_path / "gpt2"))
    calib = CalibrationSet(torch.randint(1, 200, (2, 16), generator=torch.Generator().manual_seed(0)), [], 0)
    result = prune(loaded, calib, PrunePlan.build(method="magnitude", pattern="2:4", device="cpu"))
    records = quantize(loaded, 4, False, 32, torch.float32)
    summary = compact.export_compact(loaded, tmp_path / "compact", build_report(loaded, result, calib), quantized=records)
    with compact24.safe_open(str(summary.out / "model.compact.safetensors"), "pt") as reader:
        _, coded = compact24.file_layers(reader.metadata())
    assert len(coded) == len(records) == summary.layers and all(e["transposed"] for e in coded.values())
    state, memory = compact24.load_state(summary.out), loaded.model.state_dict()
    assert all(same_bits(state[k], memory[k]) for k in state)


def v1_file(path):
    w = random_two_four(8, 16, torch.float16)
    values, positions = compact24.pack(w)
    save_file({"a.weight::values": values, "a.weight::positions": positions, "b": torch.ones(3)}, str(path),
              metadata={"format": compact24.FORMAT, "version": "1",
                        "layers": json.dumps({"a.weight": {"shape": [8, 16], "transposed": False}})})
    return w


def test_a_version_one_file_still_reads(tmp_path):
    w = v1_file(tmp_path / "model.compact.safetensors")
    state = compact24.read_compact_file(tmp_path / "model.compact.safetensors")
    assert state.keys() == {"a.weight", "b"} and same_bits(state["a.weight"], w)


def v2_file(path, mutate=lambda meta, tensors: None):
    w, record = rtn_weight(8, 64, 4, False, 32)
    parts, info = compact24.encode_quantized(w, record.codes(w), 4, 32, record.scale, record.zero)
    info.update(shape=[8, 64], transposed=False)
    tensors = {"q.weight" + s: t for s, t in parts.items()}
    meta = {"format": compact24.FORMAT, "version": "2", "layers": "{}", "quantized": {"q.weight": info}}
    mutate(meta, tensors)
    meta["quantized"] = json.dumps(meta["quantized"]) if isinstance(meta["quantized"], dict) else meta["quantized"]
    save_file(tensors, str(path), metadata=meta)
    return w


def test_a_version_two_file_reads_back(tmp_path):
    w = v2_file(tmp_path / "x.compact.safetensors")
    assert same_bits(compact24.read_compact_file(tmp_path / "x.compact.safetensors")["q.weight"], w)


def _entry(meta, **changes):
    meta["quantized"]["q.weight"].update(changes)


CORRUPTIONS = {
    "bits": lambda m, t: _entry(m, bits=3),
    "shape": lambda m, t: _entry(m, shape=[8, 128]),
    "symmetric flag": lambda m, t: _entry(m, symmetric=True),     # the zero points become strays
    "sparse flag": lambda m, t: _entry(m, sparse=False),
    "group size": lambda m, t: _entry(m, group_size=16),
    "dtype": lambda m, t: _entry(m, dtype="int8"),
    "missing tensor": lambda m, t: t.pop("q.weight::scale"),
    "wrong scale": lambda m, t: t.update({"q.weight::scale": torch.ones(8, 2, dtype=torch.int32)}),
    "not json": lambda m, t: m.update(quantized="{oops"),
    "version": lambda m, t: m.update(version="two"),
    "newer version": lambda m, t: m.update(version="3"),
    "format": lambda m, t: m.update(format="other"),
    "listed twice": lambda m, t: m.update(layers=json.dumps({"q.weight": {"shape": [8, 64], "transposed": False}})),
    "unlisted": lambda m, t: m.update(quantized={}),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_or_mismatched_metadata_is_a_user_error(tmp_path, corruption):
    v2_file(tmp_path / "model.compact.safetensors", CORRUPTIONS[corruption])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError):
        compact24.read_compact_file(tmp_path / "model.compact.safetensors")
    with pytest.raises(UserError):
        compact.unpack_folder(tmp_path, tmp_path / "out")
