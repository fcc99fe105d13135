"""The benchmark: well-formed CPU results on a tiny model, streaming events, cancel; CUDA paths when present."""

import csv
import io
import json
import math

import pytest
import torch

from tests.bench_fixtures import tiny_llama
from core.kernels import cases, end_to_end
from core.kernels import results as kernel_results
from core.kernels.benchmark import BenchOptions, run_benchmark
from core.errors import UserError
from core.events import Cancelled, CancelToken, Finished, Job, Recorder
from core.patterns import Pattern, follows_pattern

QUICK = dict(tokens=(1, 16, 64), prompt_tokens=8, new_tokens=4, budget_s=0.01, max_samples=5)


@pytest.fixture(scope="module")
def cpu_run():
    loaded = tiny_llama()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    recorder = Recorder()
    report = run_benchmark(loaded, BenchOptions(device="cpu", **QUICK), Job(recorder))
    return loaded, before, recorder, report


def test_every_shape_token_count_and_cpu_backend_is_measured(cpu_run):
    loaded, _, _, report = cpu_run
    shapes = {info.shape for block in loaded.layout.inventory for info in block.linears}
    assert {(r.shape, r.tokens, r.backend) for r in report.kernels} == {
        (s, t, b) for s in shapes for t in QUICK["tokens"] for b in (kernel_results.DENSE, kernel_results.MASKED, kernel_results.CSR)}
    counts = {r.shape: r.layers for r in report.kernels}
    assert sum(counts.values()) == sum(len(b.linears) for b in loaded.layout.inventory)


def test_cpu_results_are_finite_exact_and_labelled(cpu_run):
    _, _, _, report = cpu_run
    assert report.note == kernel_results.CPU_NOTE and report.device == "cpu"
    for r in report.kernels:
        assert r.status == "ok", r.reason
        assert math.isfinite(r.median_ms) and r.median_ms > 0 and r.samples >= 3
        assert r.rel_error < 1e-5
        assert r.weight_bytes > 0 and r.speedup > 0
        if r.backend != kernel_results.DENSE:
            assert r.expectation == kernel_results.CPU_NOTE and r.expected_gain is False
    dense = {(r.shape, r.tokens): r for r in report.kernels if r.backend == kernel_results.DENSE}
    for r in report.kernels:
        base = dense[(r.shape, r.tokens)]
        assert r.speedup == pytest.approx(base.median_ms / r.median_ms)
    csr = [r for r in report.kernels if r.backend == kernel_results.CSR]
    assert all(r.weight_bytes > r.shape[0] * r.shape[1] * 4 // 2 for r in csr)   # values + indices


def test_end_to_end_dense_and_csr_generate_and_leave_the_model_untouched(cpu_run):
    loaded, before, _, report = cpu_run
    variants = {r.variant: r for r in report.end_to_end}
    assert set(variants) == {kernel_results.DENSE, kernel_results.CSR}
    for r in variants.values():
        assert r.status == "ok", r.reason
        assert r.ttft_ms > 0 and r.itl_ms > 0 and r.tokens_per_s > 0 and r.new_tokens == 4
    assert variants[kernel_results.CSR].converted_layers == variants[kernel_results.CSR].total_layers == 14
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any("2:4 magnitude mask" in note for note in report.notes)


def test_events_stream_each_measurement_as_it_lands(cpu_run):
    _, _, recorder, report = cpu_run
    measured = [e.result for e in recorder.of(kernel_results.KernelMeasured)]
    assert measured == report.kernels
    assert [e.result for e in recorder.of(kernel_results.EndToEndMeasured)] == report.end_to_end
    assert recorder.of(kernel_results.MemorySampled) and all(e.sample.rss_bytes > 0 for e in recorder.of(kernel_results.MemorySampled))
    assert isinstance(recorder.events[-1], Finished) and recorder.events[-1].result is report


def test_json_csv_and_markdown_hold_every_result(cpu_run):
    _, _, _, report = cpu_run
    data = json.loads(report.to_json())
    assert len(data["kernels"]) == len(report.kernels) and data["note"] == kernel_results.CPU_NOTE
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(rows) == len(report.kernels) + len(report.end_to_end)
    assert {r["kind"] for r in rows} == {"kernel", "end_to_end"}
    first = rows[0]
    assert first["shape"] == f"{report.kernels[0].shape[0]}x{report.kernels[0].shape[1]}"
    assert float(first["median_ms"]) == pytest.approx(report.kernels[0].median_ms)
    table = report.to_markdown()
    assert table.count("\n| ") >= len({(r.shape, r.tokens) for r in report.kernels}) + 2


def test_cancel_stops_between_measurements():
    loaded = tiny_llama()
    token = CancelToken()
    seen = []

    def listener(event):
        if isinstance(event, kernel_results.KernelMeasured):
            seen.append(event)
            if len(seen) == 2:
                token.cancel()

    with pytest.raises(Cancelled):
        run_benchmark(loaded, BenchOptions(device="cpu", **QUICK), Job(listener, token))
    assert len(seen) == 2


def test_bad_options_are_user_errors():
    loaded = tiny_llama()
    for options in (BenchOptions(dtype="fp8"), BenchOptions(tokens=(0,)), BenchOptions(tokens=()),
                    BenchOptions(new_tokens=1)):
        with pytest.raises(UserError):
            run_benchmark(loaded, options)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            run_benchmark(loaded, BenchOptions(device="cuda"))


def test_two_four_keeps_a_two_four_weight_and_prunes_another():
    w = torch.randn(8, 16)
    pruned = cases.two_four(w)
    assert follows_pattern(pruned, Pattern(2, 4)) and torch.equal(cases.two_four(pruned), pruned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_copy_leaves_the_original_and_keeps_ties(dtype):
    loaded = tiny_llama()
    copy = end_to_end.device_copy(loaded.model, torch.device("cpu"), dtype)
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert copy.lm_head.weight.dtype == dtype and loaded.model.lm_head.weight.dtype == torch.float32
    with torch.no_grad():
        copy.model.layers[0].mlp.up_proj.weight.zero_()
    assert loaded.model.model.layers[0].mlp.up_proj.weight.abs().sum() > 0


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_cuda_benchmark_measures_or_explains_every_case():
    loaded = tiny_llama()
    report = run_benchmark(loaded, BenchOptions(device="cuda", tokens=(16, 128), prompt_tokens=16, new_tokens=4,
                                                max_samples=5))
    assert report.capability is not None
    for r in report.kernels:
        assert r.status in ("ok", "skipped", "failed")
        if r.status == "ok":
            assert math.isfinite(r.median_ms) and r.peak_bytes > 0
            assert r.rel_error < (r.tolerance or (1e-2 if r.dtype in ("fp16", "bf16") else 1e-6)), r
            assert r.checked and r.gpu == report.device_name and r.torch_version == torch.__version__
        else:
            assert r.reason
    usable = [b for b, why in report.backends.items() if not why]
    for backend in usable:
        assert any(r.backend == backend and r.status == "ok" for r in report.kernels), backend
    assert {r.variant for r in report.end_to_end} == {"dense", *usable}


@needs_cuda
def test_semi_structured_linear_matches_dense_on_each_available_backend():
    from core.kernels import sparse_rules

    capability = sparse_rules.device_capability()
    usable = [b for b, why in sparse_rules.available_backends(capability).items() if not why]
    if not usable:
        pytest.skip(f"no 2:4 backend here: {sparse_rules.available_backends(capability)}")
    w = cases.two_four(torch.randn(256, 512)).half().cuda()
    x = torch.randn(64, 512, device="cuda").half()
    ref = torch.nn.functional.linear(x.float(), w.float())
    for backend in usable:
        sparse = cases.sparse_class(backend).from_dense(w)
        got = torch.nn.functional.linear(x, sparse).float()
        assert float((got - ref).norm() / ref.norm()) < 1e-2, backend


@pytest.mark.parametrize("dtype", [torch.float16, torch.int8])
def test_gpu_case_builder_runs_its_logic_on_the_cpu(dtype):
    """The CUDA case list driven on the CPU: the dense baseline measures exactly; a backend the checks refuse is
    skipped with its reason; a kernel that fails at run time (here: not a CUDA tensor) is recorded, not raised."""
    options = BenchOptions(max_samples=3, budget_s=0.01)
    weight = torch.randn(64, 128)
    backends = {"cutlass": "PyTorch's cutlass 2:4 kernels are not built for compute capability 9.0", "cusparselt": ""}
    results = [job() for job in cases.cuda_cases((64, 128), 2, weight, 32, dtype, backends, (9, 0), options,
                                                   torch.device("cpu"))]
    by_backend = {r.backend: r for r in results}
    dense = by_backend[kernel_results.INT8_DENSE if dtype == torch.int8 else kernel_results.DENSE]
    assert dense.status == "ok" and dense.rel_error < (1e-3 if dtype == torch.float16 else 1e-12)
    assert by_backend["cutlass"].status == "skipped" and "9.0" in by_backend["cutlass"].reason
    sparse = by_backend["cusparselt"]
    assert sparse.status == "failed" and sparse.reason and sparse.expected_gain is False
