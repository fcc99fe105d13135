"""Issue 14's paths: cuSPARSELt plans, fp8, the targets' verdicts, live VRAM, static-cache decode, the
serving matrix and the Hopper script's dry run on the CPU; the kernels themselves where CUDA is present."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.bench_fixtures import tiny_llama
from core.events import Job, Phase, Recorder
from core.kernels import cusparselt as cslt
from core.kernels import hopper, serving
from core.kernels.benchmark import BenchOptions
from core.kernels.cases import two_four
from core.kernels.decode_graph import DecodeStep, greedy
from core.kernels.direct_cases import direct_backends, direct_cases
from core.kernels.memory import with_vram
from core.kernels.results import (CSLT_DIRECT, DENSE, FP8_CSLT, FP8_DENSE, KernelResult, MemorySampled,
                                  cost_per_million)

ROOT = Path(__file__).resolve().parents[3]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_search_results_of_every_torch_become_plans_and_call_arguments():
    current = cslt.parse_search((7, 3, 1, 12), "mm_search")
    assert (current.alg_id, current.split_k, current.split_k_mode, current.max_alg_id) == (7, 3, 1, 12)
    assert current.kwargs() == {"alg_id": 7, "split_k": 3, "split_k_mode": 1}
    older = cslt.parse_search((2, 1, True, 4), "mm_search")
    assert older.kwargs() == {"alg_id": 2, "split_k": 1, "split_k_one_kernel": True}
    oldest = cslt.parse_search(5, "_cslt_sparse_mm_search")
    assert oldest.kwargs() == {"alg_id": 5, "split_k": 1} and "alg 5" in oldest.describe()
    cache, made = cslt.PlanCache(), []
    for _ in range(3):
        cache.get((64, 16), lambda: made.append(1) or current)
    assert made == [1]


def test_fp8_quantization_round_trips_within_e4m3_precision():
    x = torch.randn(16, 64) * torch.logspace(-2, 2, 16)[:, None]       # rows of very different sizes
    q, scale = cslt.fp8_rowwise(x)
    assert q.dtype == cslt.FP8 and scale.shape == (16, 1)
    assert torch.allclose(q.float().abs().amax(dim=1), torch.full((16,), cslt.FP8_MAX))
    back = q.float() * scale
    assert ((back - x).abs() <= x.abs() * 2 ** -4 + scale * 2 ** -9).all()     # 3 mantissa bits; subnormals
    tq, ts = cslt.fp8_tensorwise(x)
    assert ts.numel() == 1 and float(tq.float().abs().max()) == cslt.FP8_MAX


def test_fp8_linear_matches_the_product_of_its_dequantized_operands():
    torch.manual_seed(0)
    weight, x = torch.randn(48, 64, dtype=torch.bfloat16), torch.randn(2, 5, 64, dtype=torch.bfloat16)
    layer = cslt.Fp8Linear(weight, None)
    y = layer(x)
    reference = cslt.fp8_reference(*cslt.fp8_rowwise(x.reshape(10, 64)), layer.wq, layer.ws).reshape(2, 5, 48)
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16
    assert float((y.double() - reference).norm() / reference.norm()) < cslt.FP8_TOLERANCE
    exact = x.double() @ weight.double().t()
    assert float((y.double() - exact).norm() / exact.norm()) < 0.1              # fp8's own error: a few %


def test_direct_cases_without_cuda_are_one_skipped_row_per_backend_with_its_reason():
    options = BenchOptions(device="cpu")
    rows = [m() for m in direct_cases((64, 128), 2, torch.randn(64, 128), 16, torch.bfloat16, None, options,
                                      torch.device("cpu"), "CPU")]
    assert [r.backend for r in rows] == direct_backends(options)
    for r in rows:
        assert r.status == "skipped" and r.reason and r.gpu == "CPU" and r.torch_version == torch.__version__
        assert r.tokens == 16 and r.layers == 2
    assert rows[-1].reason == (cslt.TORCHAO_MISSING if cslt.torchao is None else rows[-1].reason)
    assert direct_backends(BenchOptions(fp8=False)) == [CSLT_DIRECT]


def _row(shape, tokens, backend, dtype, ms, status="ok", checked=True, reason=""):
    return KernelResult(shape, 1, tokens, dtype, backend, "cuda", status, reason, median_ms=ms, checked=checked)


def test_targets_pass_miss_or_are_not_run_from_the_rows():
    up, down = hopper.TARGET_SHAPES
    rows = [_row(up, 2048, DENSE, "bf16", 1.0), _row(up, 2048, CSLT_DIRECT, "bf16", 0.7),
            _row(up, 2048, "cusparselt", "bf16", 0.9),
            _row(down, 2048, DENSE, "bf16", 1.0), _row(down, 2048, CSLT_DIRECT, "bf16", 0.8),
            _row(down, 2048, "cusparselt", "bf16", 0.1, checked=False),            # wrong answers never count
            _row(up, 2048, FP8_DENSE, "fp8", 0.5), _row(up, 2048, FP8_CSLT, "fp8", None, "failed", None, "bad"),
            _row(up, 16, DENSE, "bf16", 0.1), _row(up, 16, CSLT_DIRECT, "bf16", 0.01)]   # below the tokens
    verdicts = {(v.target, v.shape): v for v in hopper.judge(rows)}
    assert len(verdicts) == 4 and all(v.tokens == 2048 for v in verdicts.values())
    bf16, fp8 = (t.name for t in hopper.TARGETS)
    assert verdicts[(bf16, up)].verdict == "PASS" and verdicts[(bf16, up)].speedup == pytest.approx(1 / 0.7)
    assert verdicts[(bf16, up)].backend == CSLT_DIRECT
    assert verdicts[(bf16, down)].verdict == "MISS" and verdicts[(bf16, down)].speedup == pytest.approx(1.25)
    assert verdicts[(fp8, up)].verdict == "NOT RUN" and "bad" in verdicts[(fp8, up)].detail
    assert verdicts[(fp8, down)].verdict == "NOT RUN"
    assert "**PASS**" in hopper.verdict_table(list(verdicts.values()))


def test_cost_per_million_tokens_from_throughput_and_price():
    assert cost_per_million(1000.0, 3.6) == pytest.approx(1.0)       # $0.001/s, 1000 s per million tokens
    assert cost_per_million(2000.0, 3.6) == pytest.approx(0.5)
    assert cost_per_million(1000.0, 0.0) is None and cost_per_million(None, 3.6) is None


def test_live_vram_comes_before_events_at_most_every_interval_and_never_on_the_cpu():
    recorder, clock, readings = Recorder(), {"now": 10.0}, iter(range(1, 100))
    job = with_vram(Job(recorder), sampler=lambda: (next(readings) << 20, 64 << 20), interval_s=1.0,
                    clock=lambda: clock["now"])
    for step in range(5):
        job.emit(Phase("prune", step, 5))
        clock["now"] += 0.6
    samples = [e.sample for e in recorder.of(MemorySampled)]
    assert [s.t_s for s in samples] == pytest.approx([0.0, 1.2, 2.4])       # events at 0, .6, 1.2, 1.8, 2.4
    assert [s.allocated_bytes >> 20 for s in samples] == [1, 2, 3] and all(s.reserved_bytes == 64 << 20 for s in samples)
    assert [e.done for e in recorder.of(Phase)] == [0, 1, 2, 3, 4]
    assert isinstance(recorder.events[0], MemorySampled) and job.cancel is not None
    if not torch.cuda.is_available():
        plain = Job(Recorder())
        assert with_vram(plain) is plain


def test_static_cache_decode_equals_dynamic_cache_decode():
    loaded = tiny_llama()
    prompt = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    tokens, logits = greedy(DecodeStep(loaded.model, 16), prompt, 5)
    with torch.no_grad():
        out = loaded.model(input_ids=prompt, use_cache=True)
        expected, cache = [out.logits[:, -1]], out.cache
        for _ in range(4):
            out = loaded.model(input_ids=expected[-1].argmax(-1, keepdim=True), cache=cache, use_cache=True)
            expected.append(out.logits[:, -1])
            cache = out.cache
    assert torch.equal(tokens, torch.stack([e.argmax(-1) for e in expected], dim=1))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(logits, expected))
    with pytest.raises(RuntimeError, match="all are used"):
        greedy(DecodeStep(loaded.model, 9), prompt, 5)


def test_serving_matrix_on_the_cpu_runs_dense_and_explains_the_rest():
    loaded = tiny_llama()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    names = [info.full_name for block in loaded.layout.inventory for info in block.linears]
    options = serving.ServingOptions(prefill=(8,), batches=(2,), context=4, steps=3, repeats=1, gpu_price=3.6)
    rows = list(serving.serving_matrix(loaded.model, names, options, torch.device("cpu"), None, "tiny", "CPU", Job()))
    assert len(rows) == len(serving.VARIANTS) * 3          # prefill, decode eager, decode graphed
    dense = [r for r in rows if r.variant == serving.DENSE_BF16]
    prefill, eager, graphed = dense
    assert prefill.status == eager.status == "ok" and graphed.status == "skipped" and "CUDA" in graphed.reason
    assert prefill.tokens_per_s == pytest.approx(8 / (prefill.ttft_ms / 1000))
    assert eager.tokens_per_s == pytest.approx(2 / (eager.itl_ms / 1000))
    assert eager.cost_per_million == pytest.approx(cost_per_million(eager.tokens_per_s, 3.6))
    assert eager.checked and eager.rel_error == 0.0      # dense is its own reference
    assert all(r.status == "skipped" and r.reason for r in rows if r.variant != serving.DENSE_BF16)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_bench_cli_takes_the_price_and_the_new_paths():
    parser = argparse.ArgumentParser()
    hopper.add_bench_arguments(parser)          # what core/cli/main.py registers on `bench`
    args = parser.parse_args(["--gpu-price", "2.5", "--no-fp8"])
    assert hopper.bench_choices(args) == {"gpu_price": 2.5, "direct": True, "fp8": False}
    BenchOptions(**hopper.bench_choices(args)).validate()


def test_hopper_script_dry_run_writes_rows_and_skips_every_gpu_case(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("hopper_24", None)
    import hopper_24

    out = tmp_path / "h.jsonl"
    assert hopper_24.main(["--dry-run", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"meta", "kernel", "serving", "target"} and rows[0]["dry_run"] is True
    kernels = [r for r in rows if r["kind"] == "kernel"]
    assert kernels and all(r["status"] == "skipped" and r["reason"] for r in kernels)
    gpu_rows = [r for r in rows if r["kind"] == "serving" and (r["graphed"] or r["variant"] != serving.DENSE_BF16)]
    assert gpu_rows and all(r["status"] == "skipped" and r["reason"] for r in gpu_rows)
    assert all(r["verdict"] == "NOT RUN" for r in rows if r["kind"] == "target")
    assert "DRY RUN" in out.with_suffix(".md").read_text()
    assert "NOT RUN" in capsys.readouterr().out


@needs_cuda
def test_direct_cusparselt_and_fp8_layers_match_the_dense_product():
    weight = two_four(torch.randn(256, 512)).cuda().bfloat16()
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    exact = x.double() @ weight.double().t()
    if not cslt.direct_support():
        y = cslt.CsltLinear(weight, None)(x)
        assert float((y.double() - exact).norm() / exact.norm()) < cslt.HALF_TOLERANCE
    if not cslt.fp8_support(torch.cuda.get_device_capability()):
        y = cslt.Fp8Linear(weight, None)(x)
        assert float((y.double() - exact).norm() / exact.norm()) < 0.1


@needs_cuda
def test_graphed_decode_equals_eager_decode():
    loaded = tiny_llama()
    model = loaded.model.cuda()
    prompt = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1)).cuda()
    eager, _ = greedy(DecodeStep(model, 16), prompt, 5)
    graphed, _ = greedy(DecodeStep(model, 16, graphed=True), prompt, 5)
    assert torch.equal(eager, graphed)


def test_a_variant_swaps_in_and_out_leaving_the_model_exactly_as_it_was():
    loaded = tiny_llama()
    model = loaded.model.to(torch.bfloat16)
    names = [info.full_name for block in loaded.layout.inventory for info in block.linears]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = model(input_ids=prompt).logits.double()
        originals = serving.swap_in(model, names, serving.FP8_ROWWISE)      # fp8 matmuls run on the CPU too
        assert all(isinstance(model.get_submodule(n), cslt.Fp8Linear) for n in names)
        fp8 = model(input_ids=prompt).logits.double()
        serving.swap_out(model, originals)
    assert float((fp8 - dense).norm() / dense.norm()) < serving.TOLERANCE[serving.FP8_ROWWISE]
    assert not torch.equal(fp8, dense)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
