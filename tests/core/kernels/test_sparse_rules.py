"""The 2:4 kernel rules refuse what PyTorch's kernels refuse, with the reason."""

import pytest
import torch

from core.kernels import sparse_rules as rules
from core.kernels.sparse_rules import CUSPARSELT, CUTLASS, check, expected_gain

FP16, BF16, FP32, INT8 = torch.float16, torch.bfloat16, torch.float32, torch.int8


def test_rules_table_matches_the_installed_pytorch_tables():
    for backend in rules.BACKENDS:
        installed = rules.installed_table(backend)
        assert installed, f"torch.sparse has no {backend} class"
        for dtype, multiple in rules.RULES[backend].weight_multiple.items():
            if dtype in installed:
                assert installed[dtype] == multiple, (backend, dtype)


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (6, 1)])
@pytest.mark.parametrize("backend", rules.BACKENDS)
def test_no_sparse_tensor_cores_before_ampere(capability, backend):
    ok, reason = check((3072, 10240), FP16, backend, capability)
    assert not ok and "sparse tensor cores" in reason


def test_cutlass_runs_on_ampere_and_ada_only_cusparselt_up_to_12x():
    assert check((3072, 10240), FP16, CUTLASS, (8, 0)) == (True, "")
    assert check((3072, 10240), FP16, CUTLASS, (8, 9)) == (True, "")
    ok, reason = check((3072, 10240), FP16, CUTLASS, (9, 0))
    assert not ok and "9.0" in reason
    for capability in [(8, 0), (8, 6), (9, 0), (10, 0), (12, 0)]:
        assert check((3072, 10240), BF16, CUSPARSELT, capability) == (True, "")
    assert not check((3072, 10240), BF16, CUSPARSELT, (13, 0))[0]


def test_no_cuda_device_is_refused():
    ok, reason = check((64, 64), FP16, CUSPARSELT, None)
    assert not ok and "no CUDA device" in reason


@pytest.mark.parametrize("backend", rules.BACKENDS)
def test_fp32_takes_only_one_in_two_not_two_in_four(backend):
    ok, reason = check((64, 128), FP32, backend, (8, 0))
    assert not ok and "1:2" in reason


def test_unknown_dtype_is_refused():
    ok, reason = check((64, 128), torch.float64, CUSPARSELT, (8, 0))
    assert not ok and "float64" in reason


@pytest.mark.parametrize("backend,dtype", [(CUTLASS, INT8), (CUTLASS, FP16), (CUTLASS, BF16),
                                           (CUSPARSELT, INT8), (CUSPARSELT, FP16), (CUSPARSELT, BF16)])
def test_shapes_run_unpadded_exactly_when_the_kernel_accepts_them(backend, dtype):
    rows, cols = rules.RULES[backend].weight_multiple[dtype]
    for m in range(4, 4 * rows + 1, 4):
        for n in range(4, 4 * cols + 1, 4):
            # torch's own rule in SparseSemiStructuredTensor._validate_device_dim_dtype_shape
            accepted = m >= rows and m % rows == 0 and n >= cols and n % cols == 0
            ok, reason = check((m, n), dtype, backend, (8, 0))
            assert (ok and reason == "") == accepted, (m, n, reason)
            if not accepted and ok:
                assert "padded to" in reason
                pm, pn = rules.padded_shape((m, n), dtype, backend)
                assert pm % rows == 0 and pn % cols == 0 and pm * pn <= (1 + rules.MAX_PADDING) * m * n


def test_padding_that_costs_too_much_is_a_skip_with_the_numbers():
    ok, reason = check((48, 128), FP16, CUTLASS, (8, 0))     # 48 -> 64 rows: a third more work
    assert not ok and "64x128" in reason and "33%" in reason
    ok, reason = check((3072, 10240 + 4), FP16, CUSPARSELT, (9, 0))
    assert ok and "padded to 3072x10256" in reason


def test_inputs_not_in_groups_of_four_are_refused():
    ok, reason = check((64, 130), FP16, CUSPARSELT, (9, 0))
    assert not ok and "groups of 4" in reason


def test_few_tokens_or_small_weights_are_not_expected_to_gain():
    gain, why = expected_gain((4096, 4096), 1, FP16, CUSPARSELT)
    assert not gain and "padded to 8" in why
    gain, why = expected_gain((576, 576), 8192, FP16, CUSPARSELT)
    assert not gain and "too small" in why
    gain, _ = expected_gain((3072, 10240), 2048, FP16, CUTLASS)
    assert gain


def test_available_backends_without_cuda_give_reasons():
    available = rules.available_backends(None)
    assert set(available) == set(rules.BACKENDS) and all("no CUDA" in why for why in available.values())
