"""Magnitude, Wanda and SparseGPT against their definitions, on random layers fed through the real hooks."""

import pytest
import torch
from torch import nn

from core.patterns import Pattern, UNSTRUCTURED
from core.pruning.methods import METHODS
from core.pruning.methods import sparsegpt
from core.pruning.stats import COLUMN_NORMS, HESSIAN, LayerStats, StatsCollector
from tests.reference import brute_nm, brute_per_layer, brute_per_row

IN, OUT = 64, 24
NM_PATTERNS = [Pattern(2, 4), Pattern(4, 8), Pattern(1, 4), Pattern(3, 8)]


def activations(seed=0, batches=3, tokens=40, features=IN):
    """Correlated activations with very different column scales, split in batches [1, tokens, features]."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features ** 0.5 + torch.eye(features)
    scales = torch.exp(torch.randn(features, generator=g))
    return [((torch.randn(1, tokens, features, generator=g) @ mixing) * scales) for _ in range(batches)]


def layer_and_stats(seed=0, out_features=OUT, in_features=IN):
    """A real nn.Linear, random activations run through it with StatsCollector hooks, and the activations."""
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=False)
    xs = activations(seed, features=in_features)
    collector = StatsCollector({"layer": layer}, {COLUMN_NORMS, HESSIAN})
    with torch.no_grad():
        for x in xs:
            layer(x)
    stats = collector.close()["layer"]
    return layer.weight.detach().clone(), stats, torch.cat([x.reshape(-1, in_features) for x in xs])


def output_error(weight, pruned, X):
    return float(((weight - pruned) @ X.t()).pow(2).sum())


def test_stats_collector_sums_match_the_activations():
    weight, stats, X = layer_and_stats()
    assert stats.tokens == X.shape[0]
    torch.testing.assert_close(stats.column_norms, X.norm(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.hessian, 2 * X.t() @ X / X.shape[0], rtol=1e-4, atol=1e-4)


def test_layers_fed_the_same_tensor_share_one_stats_object():
    q, k = nn.Linear(8, 4), nn.Linear(8, 4)
    other = nn.Linear(4, 4)
    collector = StatsCollector({"q": q, "k": k, "other": other}, {COLUMN_NORMS})
    x = torch.randn(2, 5, 8)
    other(q(x) + k(x))
    stats = collector.close()
    assert stats["q"] is stats["k"] and stats["other"] is not stats["q"]
    torch.testing.assert_close(stats["q"].column_norms, x.reshape(-1, 8).norm(dim=0))


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_wanda_unstructured_mask_is_the_brute_force_definition(sparsity):
    weight, stats, X = layer_and_stats(seed=1)
    score = weight.abs() * X.norm(dim=0).reshape(1, -1)     # |W_ij| · ‖X_j‖₂ from the activations themselves
    result = METHODS["wanda"].prune(weight, stats, sparsity, UNSTRUCTURED)
    assert torch.equal(result.mask, brute_per_row(score, sparsity))
    assert torch.equal(result.weight, torch.where(result.mask, torch.zeros_like(weight), weight))
    # the activation norms matter: plain magnitude per row would choose differently
    assert not torch.equal(result.mask, brute_per_row(weight.abs(), sparsity))


@pytest.mark.parametrize("pattern", NM_PATTERNS, ids=str)
def test_wanda_nm_mask_is_the_brute_force_definition(pattern):
    weight, stats, X = layer_and_stats(seed=2)
    score = weight.abs() * X.norm(dim=0).reshape(1, -1)
    result = METHODS["wanda"].prune(weight, stats, pattern.sparsity, pattern)
    assert torch.equal(result.mask, brute_nm(score, pattern.n, pattern.m))


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_magnitude_is_per_layer_brute_force(sparsity):
    weight, _, _ = layer_and_stats(seed=3)
    result = METHODS["magnitude"].prune(weight, None, sparsity, UNSTRUCTURED)
    assert torch.equal(result.mask, brute_per_layer(weight.abs(), sparsity))
    assert int((result.weight == 0).sum()) == int(weight.numel() * sparsity)
    # per layer, not per row: rows end up with different counts
    assert len(set(result.mask.sum(1).tolist())) > 1


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", NM_PATTERNS, ids=str)
def test_every_nm_group_keeps_exactly_n_weights(method, pattern):
    weight, stats, _ = layer_and_stats(seed=4)
    options = sparsegpt.Options(blocksize=16)   # several blocks: exercises the lazy batch update too
    result = METHODS[method].prune(weight, stats, pattern.sparsity, pattern, options)
    groups = result.weight.reshape(OUT, IN // pattern.m, pattern.m)
    assert ((groups == 0).sum(-1) == pattern.m - pattern.n).all()
    assert ((result.mask.reshape(groups.shape)).sum(-1) == pattern.m - pattern.n).all()
    assert torch.equal(result.weight == 0, result.mask)


def test_sparsegpt_at_sparsity_zero_leaves_the_weights_unchanged():
    weight, stats, _ = layer_and_stats(seed=5)
    result = METHODS["sparsegpt"].prune(weight, stats, 0.0, UNSTRUCTURED, sparsegpt.Options(blocksize=16))
    assert not result.mask.any()
    torch.testing.assert_close(result.weight, weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, Pattern(2, 4)], ids=str)
def test_sparsegpt_output_error_is_no_higher_than_wanda_and_magnitude(pattern):
    weight, stats, X = layer_and_stats(seed=6)
    errors = {name: output_error(weight, METHODS[name].prune(weight, stats, 0.5, pattern, sparsegpt.Options()).weight, X)
              for name in METHODS}
    assert errors["sparsegpt"] <= errors["wanda"] and errors["sparsegpt"] <= errors["magnitude"], errors
    assert errors["wanda"] < errors["magnitude"], errors   # these activations have very uneven column norms


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, Pattern(2, 4)], ids=str)
def test_sparsegpt_without_weight_update_changes_only_masked_entries(pattern):
    weight, stats, _ = layer_and_stats(seed=7)
    result = METHODS["sparsegpt"].prune(weight, stats, 0.5, pattern, sparsegpt.Options(update_weights=False))
    assert result.mask.float().mean() == 0.5
    assert torch.equal(result.weight[~result.mask], weight[~result.mask])
    assert (result.weight[result.mask] == 0).all()
    updated = METHODS["sparsegpt"].prune(weight, stats, 0.5, pattern, sparsegpt.Options())
    assert not torch.equal(updated.weight[~updated.mask], weight[~updated.mask])


def hessian_with_eigenvalues(eigenvalues, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return (q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.t()).float()


def stats_for(hessian):
    """LayerStats whose `hessian` property (2·XᵀX / tokens) returns `hessian`."""
    return LayerStats(tokens=2, xtx=hessian.clone())


def test_sparsegpt_retries_dampening_on_an_indefinite_hessian_and_says_so():
    H = hessian_with_eigenvalues([1.0] * 7 + [-0.03])      # mean diagonal ≈ 0.87: 1% damps by 0.0087 < 0.03
    assert torch.linalg.cholesky_ex(H + 0.01 * H.diagonal().mean() * torch.eye(8))[1] != 0
    weight = torch.randn(4, 8)
    result = METHODS["sparsegpt"].prune(weight, stats_for(H), 0.5, UNSTRUCTURED, sparsegpt.Options())
    assert result.notes["dampening_retries"] == 1
    assert result.notes["dampening"] == pytest.approx(0.1)
    assert result.mask.sum() == 16 and torch.isfinite(result.weight).all()


def test_sparsegpt_gives_up_when_no_dampening_helps():
    H = hessian_with_eigenvalues([1.0] * 7 + [-50.0])
    with pytest.raises(sparsegpt.NotPositiveDefinite, match="not positive definite"):
        METHODS["sparsegpt"].prune(torch.randn(4, 8), stats_for(H), 0.5, UNSTRUCTURED, sparsegpt.Options())


def test_sparsegpt_update_is_the_obs_closed_form_for_one_pruned_weight_per_row():
    """OBS: removing w_q moves the free weights by δ = −(w_q / [H⁻¹]_qq) · H⁻¹_{:,q}. SparseGPT walks the columns
    left to right, so the free weights are columns q.. and H⁻¹ is the inverse of the dampened Hessian restricted
    to them; for q = 0 that is the textbook formula with the full H⁻¹."""
    d = 8
    torch.manual_seed(8)
    X = torch.randn(200, d, dtype=torch.float64) @ (torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(d, d, dtype=torch.float64))
    H = 2 * X.t() @ X / X.shape[0]
    signs = torch.sign(torch.randn(3, d, dtype=torch.float64))
    weight = signs * (2.0 + torch.rand(3, d, dtype=torch.float64))
    pruned_column = [0, 3, 6]            # one small weight per row: the one the method must prune
    for row, q in enumerate(pruned_column):
        weight[row, q] = 0.2 * signs[row, q]
    options = sparsegpt.Options(blocksize=8, dampening=0.01)
    result = METHODS["sparsegpt"].prune(weight.float(), stats_for(H.float()), 1 / 8, Pattern(7, 8), options)

    damped = H + options.dampening * H.diagonal().mean() * torch.eye(d, dtype=torch.float64)
    for row, q in enumerate(pruned_column):
        assert result.mask[row].nonzero().flatten().tolist() == [q]
        inverse = torch.linalg.inv(damped[q:, q:])
        expected = weight[row].clone()
        expected[q:] -= weight[row, q] / inverse[0, 0] * inverse[:, 0]
        assert abs(float(expected[q])) < 1e-12            # the closed form zeroes the pruned weight itself
        assert (expected[q + 1:] - weight[row, q + 1:]).abs().max() > 1e-2   # a real update, not a no-op
        torch.testing.assert_close(result.weight[row].double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_transposed_weight_view_gives_the_same_result(method):
    """GPT-2's Conv1D stores [in, out]; the pipeline hands methods a transposed view of it."""
    weight, stats, _ = layer_and_stats(seed=9)
    stored = weight.t().contiguous()           # how Conv1D keeps it
    for pattern in (UNSTRUCTURED, Pattern(2, 4)):
        expected = METHODS[method].prune(weight, stats, 0.5, pattern, sparsegpt.Options())
        actual = METHODS[method].prune(stored.t(), stats, 0.5, pattern, sparsegpt.Options())
        assert torch.equal(actual.mask, expected.mask) and torch.equal(actual.weight, expected.weight)


def test_sparsegpt_factorises_a_shared_hessian_once_with_identical_results(monkeypatch):
    """q/k/v share one statistics object: the second and third layer reuse U, and get what a fresh solve gives."""
    _, stats, _ = layer_and_stats(seed=3)
    weights = [torch.randn(OUT, IN, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    fresh = [METHODS["sparsegpt"].prune(w, LayerStats(stats.tokens, stats.column_sq_norms, stats.xtx.clone()),
                                        0.5, UNSTRUCTURED, sparsegpt.Options()) for w in weights]
    calls = []
    original = sparsegpt.inverse_hessian_factor
    monkeypatch.setattr(sparsegpt, "inverse_hessian_factor", lambda *a, **k: calls.append(1) or original(*a, **k))
    shared = [METHODS["sparsegpt"].prune(w, stats, 0.5, UNSTRUCTURED, sparsegpt.Options()) for w in weights]
    assert len(calls) == 1
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask) for a, b in zip(fresh, shared))


@pytest.mark.parametrize("features", [7, 128, 300, 1536])
def test_upper_gram_accumulation_equals_the_full_product(features):
    from core.pruning.stats import add_upper_gram, symmetrize_upper

    g = torch.Generator().manual_seed(features)
    batches = [torch.randn(50, features, generator=g, dtype=torch.float64) for _ in range(3)]
    acc = None
    for x in batches:
        acc = add_upper_gram(acc, x)
    X = torch.cat(batches)
    torch.testing.assert_close(symmetrize_upper(acc), X.t() @ X, rtol=1e-12, atol=1e-10)


def test_sparsegpt_may_consume_disposable_statistics_with_bit_identical_results():
    """The pipeline lets SparseGPT turn its own XᵀX into H in place; the caller's statistics stay untouched."""
    import dataclasses

    weight, stats, _ = layer_and_stats(seed=5)
    xtx_before = stats.xtx.clone()
    for pattern in (UNSTRUCTURED, Pattern(2, 4)):
        kept = dataclasses.replace(stats, xtx=stats.xtx.clone(), cache={})
        consumed = dataclasses.replace(stats, xtx=stats.xtx.clone(), cache={}, disposable=True)
        expected = sparsegpt.prune(weight, kept, 0.5, pattern)
        actual = sparsegpt.prune(weight, consumed, 0.5, pattern)
        assert torch.equal(actual.weight, expected.weight) and torch.equal(actual.mask, expected.mask)
        assert consumed.xtx is None and torch.equal(kept.xtx, xtx_before)
        again = sparsegpt.prune(weight, consumed, 0.5, pattern)     # a layer sharing them: U comes from the cache
        assert torch.equal(again.weight, expected.weight)
