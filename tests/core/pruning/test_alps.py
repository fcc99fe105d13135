"""ALPS against its definition: the sparsity set it must land in, an objective below SparseGPT's and below
its own starting point, and a refit that never leaves the support."""

import json

import pytest
import torch

from core.patterns import Pattern, UNSTRUCTURED, follows_pattern
from core.pruning.masks import lowest_k, nm_mask
from core.pruning.methods import METHODS, alps, sparsegpt
from core.pruning.stats import COLUMN_NORMS, HESSIAN, LayerStats, StatsCollector
from tests.core.pruning.test_methods import IN, OUT, activations, layer_and_stats, output_error

NM = [Pattern(2, 4), Pattern(4, 8), Pattern(1, 4)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Layers of 24 × 64: a second OpenMP thread only adds spin-waiting (seconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fresh(stats):
    return LayerStats(stats.tokens, stats.column_sq_norms, stats.xtx.clone())


def test_is_registered_with_the_hessian_and_takes_its_options():
    assert HESSIAN in METHODS["alps"].needs and METHODS["alps"].prune is alps.prune
    # the reference's defaults (mazumder-lab/ALPS, ALPS_admm and its cg_batch call)
    assert alps.Options() == alps.Options(rho=0.1, max_iterations=300, update_every=3, refit_steps=10, ridge=0.01)


def test_at_sparsity_zero_the_weights_are_unchanged():
    weight, stats, _ = layer_and_stats(seed=5)
    result = alps.prune(weight, stats, 0.0, UNSTRUCTURED)
    assert not result.mask.any()
    assert torch.equal(result.weight, weight) and result.weight is not weight


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, Pattern(2, 4), Pattern(4, 8)], ids=str)
def test_output_error_is_below_sparsegpt_on_correlated_inputs(pattern):
    for seed in range(3):
        weight, stats, X = layer_and_stats(seed=seed)
        ours = alps.prune(weight, stats, 0.5, pattern)
        theirs = sparsegpt.prune(weight, fresh(stats), 0.5, pattern)
        assert output_error(weight, ours.weight, X) < 0.8 * output_error(weight, theirs.weight, X), seed


@pytest.mark.parametrize("pattern", NM, ids=str)
def test_every_nm_group_holds_its_pattern(pattern):
    weight, stats, _ = layer_and_stats(seed=4)
    result = alps.prune(weight, stats, pattern.sparsity, pattern)
    assert follows_pattern(result.weight, pattern)
    groups = result.mask.reshape(OUT, IN // pattern.m, pattern.m)
    assert (groups.sum(-1) == pattern.m - pattern.n).all()
    assert (result.weight[result.mask] == 0).all() and (result.weight[~result.mask] != 0).all()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_unstructured_prunes_exactly_the_count_of_the_whole_layer(sparsity):
    weight, stats, _ = layer_and_stats(seed=6)
    result = alps.prune(weight, stats, sparsity, UNSTRUCTURED)
    count = int(weight.numel() * sparsity)
    assert int(result.mask.sum()) == count and int((result.weight == 0).sum()) == count
    assert result.weight.dtype == torch.float32 and result.mask.dtype == torch.bool
    assert len(set(result.mask.sum(1).tolist())) > 1          # one budget for the layer, not one per row


def test_everything_pruned_at_sparsity_one():
    weight, stats, _ = layer_and_stats(seed=6)
    result = alps.prune(weight, stats, 1.0, UNSTRUCTURED)
    assert result.mask.all() and not result.weight.any()


def test_the_refit_keeps_the_admm_support_and_only_moves_kept_weights():
    weight, stats, X = layer_and_stats(seed=7)
    for pattern in (UNSTRUCTURED, Pattern(2, 4)):
        admm_only = alps.prune(weight, stats, 0.5, pattern, alps.Options(refit_steps=0))
        refitted = alps.prune(weight, stats, 0.5, pattern)
        assert admm_only.notes["refit_steps"] == 0 and refitted.notes["refit_steps"] > 0
        assert torch.equal(refitted.mask, admm_only.mask)
        assert (refitted.weight[refitted.mask] == 0).all()
        assert not torch.equal(refitted.weight, admm_only.weight)
        assert output_error(weight, refitted.weight, X) <= output_error(weight, admm_only.weight, X)


def objective(B, B0, Hs):
    E = (B - B0).double()
    return float(((E @ Hs.double()) * E).sum())


def test_refit_is_conjugate_gradient_restricted_to_the_support():
    # (torch.allclose, not torch.testing.assert_close: the latter imports torch.distributed, seconds)
    torch.manual_seed(0)
    d, rows = 16, 5
    A = torch.randn(40, d, dtype=torch.float64)
    Hs = (A.t() @ A / 40 + 0.05 * torch.eye(d, dtype=torch.float64)).float()
    B0 = torch.randn(rows, d)
    G = B0 @ Hs
    support = torch.rand(rows, d) > 0.5
    start = B0.masked_fill(~support, 0)
    for steps in (1, 3):
        X, done = alps.refit(start.clone(), support, Hs, G, steps)
        assert done == steps
        assert (X[~support] == 0).all()
        assert objective(X, B0, Hs) < objective(start, B0, Hs)
    # enough steps: the exact least-squares solution on each row's support
    X, _ = alps.refit(start.clone(), support, Hs, G, 2 * d, rtol=1e-7)
    for r in range(rows):
        s = support[r]
        exact = torch.linalg.solve(Hs[s][:, s].double(), G[r, s].double())
        assert torch.allclose(X[r, s].double(), exact, rtol=1e-3, atol=1e-4)
        assert (X[r, ~s] == 0).all()


@pytest.mark.parametrize("pattern", [UNSTRUCTURED, Pattern(2, 4)], ids=str)
def test_the_optimization_beats_the_projection_of_the_dense_weights(pattern):
    """ADMM + refit against its own start: the rescaled dense weights projected onto the sparsity set
    (magnitude of |W|·√H_jj), with and without the same refit on that support."""
    for seed in range(2):
        weight, stats, X = layer_and_stats(seed=seed)
        result = alps.prune(weight, stats, 0.5, pattern)
        scale = (stats.xtx.diagonal() + 0.01 * stats.xtx.diagonal().mean()).sqrt()
        score = weight.abs() * scale
        projected = nm_mask(score, pattern) if pattern.structured \
            else lowest_k(score.flatten(), weight.numel() // 2).view_as(score)
        assert torch.allclose(result.score, score, rtol=1e-5, atol=0)
        magnitude = output_error(weight, weight.masked_fill(projected, 0), X)
        no_admm = alps.prune(weight, stats, 0.5, pattern, alps.Options(max_iterations=0))
        assert torch.equal(no_admm.mask, projected)
        ours = output_error(weight, result.weight, X)
        assert ours < output_error(weight, no_admm.weight, X) < magnitude
        assert result.notes["iterations"] > 3


def test_dead_input_columns_are_pruned_first_and_the_rest_stays_finite():
    torch.manual_seed(3)
    layer = torch.nn.Linear(IN, OUT, bias=False)
    xs = activations(3)
    for x in xs:
        x[..., [5, 17, 40]] = 0
    collector = StatsCollector({"layer": layer}, {COLUMN_NORMS, HESSIAN})
    with torch.no_grad():
        for x in xs:
            layer(x)
    stats = collector.close()["layer"]
    assert (stats.xtx.diagonal() == 0).sum() == 3
    weight, X = layer.weight.detach().clone(), torch.cat([x.reshape(-1, IN) for x in xs])
    for pattern in (UNSTRUCTURED, Pattern(2, 4)):
        result = alps.prune(weight, stats, 0.5, pattern)
        assert torch.isfinite(result.weight).all()
        assert result.mask[:, [5, 17, 40]].all() and int(result.mask.sum()) == weight.numel() // 2
        assert (result.score[:, [5, 17, 40]] == 0).all()
        theirs = sparsegpt.prune(weight, fresh(stats), 0.5, pattern)
        assert output_error(weight, result.weight, X) < output_error(weight, theirs.weight, X)


def test_non_finite_statistics_are_refused_as_sparsegpt_refuses_them():
    """The pipeline skips a layer with a warning on NotPositiveDefinite (a MoE expert that saw no tokens)."""
    weight, stats, _ = layer_and_stats(seed=2)
    stats.xtx[3, 3] = float("nan")
    with pytest.raises(sparsegpt.NotPositiveDefinite, match="not finite"):
        alps.prune(weight, stats, 0.5, UNSTRUCTURED)


def test_layers_with_one_input_share_one_eigendecomposition(monkeypatch):
    _, stats, _ = layer_and_stats(seed=3)
    weights = [torch.randn(OUT, IN, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    alone = [alps.prune(w, fresh(stats), 0.5, UNSTRUCTURED) for w in weights]
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda H: calls.append(1) or eigh(H))
    shared = fresh(stats)
    shared.disposable = True          # the pipeline's own sums: rescaled in place, then dropped
    together = [alps.prune(w, shared, 0.5, UNSTRUCTURED) for w in weights]
    assert len(calls) == 1 and shared.xtx is None
    for a, b in zip(alone, together):
        assert torch.equal(a.mask, b.mask)
        assert torch.allclose(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_notes_are_json_numbers_and_inputs_are_left_alone():
    weight, stats, _ = layer_and_stats(seed=8)
    weight = torch.nn.Parameter(weight)           # a layer's own weight, gradients on
    original, xtx = weight.clone(), stats.xtx.clone()
    result = alps.prune(weight, stats, 0.5, Pattern(2, 4), sparsegpt.Options())   # foreign options: defaults
    assert torch.equal(weight, original) and torch.equal(stats.xtx, xtx) and not result.weight.requires_grad
    notes = json.loads(json.dumps(result.notes))
    assert set(notes) >= {"iterations", "rho", "support_change", "refit_steps", "error"}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in notes.values())
    assert notes["iterations"] <= 300 and notes["rho"] > 0.1 and 0 <= notes["error"] < 1


def test_lowest_in_layer_is_masks_lowest_k_on_the_flattened_layer():
    g = torch.Generator().manual_seed(0)
    for rounding in (False, True):
        scores = torch.rand(13, 29, generator=g)
        if rounding:
            scores = scores.round(decimals=1)      # many ties
        scores[:, :3] = 0
        for k in (0, 1, 50, 200, 13 * 29 - 1, 13 * 29):
            assert torch.equal(alps.lowest_in_layer(scores, k), lowest_k(scores.flatten(), k).view_as(scores))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_the_cpu():
    weight, stats, X = layer_and_stats(seed=2)
    for pattern in (UNSTRUCTURED, Pattern(2, 4)):
        cpu = alps.prune(weight, fresh(stats), 0.5, pattern)
        gpu_stats = LayerStats(stats.tokens, None, stats.xtx.cuda())
        gpu = alps.prune(weight.cuda(), gpu_stats, 0.5, pattern)
        assert gpu.weight.is_cuda and gpu.mask.is_cuda
        assert (gpu.weight[gpu.mask] == 0).all()
        ours, theirs = output_error(weight, gpu.weight.cpu(), X), output_error(weight, cpu.weight, X)
        assert ours == pytest.approx(theirs, rel=0.05)


@pytest.mark.parametrize("pattern", NM + [Pattern(3, 8), Pattern(5, 16)], ids=str)
def test_lowest_in_groups_is_masks_nm_mask(pattern):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(7, 48, generator=g)
    assert torch.equal(alps.lowest_in_groups(scores, pattern), nm_mask(scores, pattern))
    scores = scores.round(decimals=1)          # ties: left to nm_mask, still exactly M − N per group
    scores[:, :8] = 0
    mask = alps.lowest_in_groups(scores, pattern)
    assert (mask.reshape(7, -1, pattern.m).sum(-1) == pattern.m - pattern.n).all()
    kept_min = scores.masked_fill(mask, float("inf")).reshape(7, -1, pattern.m).amin(-1)
    pruned_max = scores.masked_fill(~mask, -1).reshape(7, -1, pattern.m).amax(-1)
    assert (pruned_max <= kept_min).all()
