"""The real model: SmolLM2-135M (the demo) calibrated on WikiText-2 valid and scored on WikiText-2 test.

Few, short windows so the suite stays quick; the full protocol (64 × 512 calibration, 40 × 512 evaluation)
is the benchmark script's job. Run with `-s` to see the perplexities.
"""

import time

import pytest
import torch

from core.pruning import pipeline
from core.data.calibration import CalibrationSet, load_calibration
from core.evaluation.perplexity import evaluation_windows, perplexity
from core.models.open import open_model
from core.pruning.plan import PrunePlan

pytestmark = pytest.mark.slow

CALIB_WINDOWS, EVAL_WINDOWS, SEQLEN = 8, 4, 256


@pytest.fixture(scope="module")
def demo(wiki_dir):
    loaded = open_model("demo")
    calib = load_calibration([wiki_dir / "wiki.valid.raw"], loaded.tokenizer, nsamples=CALIB_WINDOWS, seqlen=SEQLEN, seed=0)
    windows = evaluation_windows(loaded.tokenizer, wiki_dir / "wiki.test.raw", SEQLEN, max_windows=EVAL_WINDOWS)
    dense_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    dense = perplexity(loaded.model, windows, device="cpu").ppl
    print(f"\ndemo model, {CALIB_WINDOWS}×{SEQLEN} calibration, {EVAL_WINDOWS}×{SEQLEN} evaluation: dense ppl {dense:.2f}")
    return loaded, calib, windows, dense_state, dense


def pruned_perplexity(demo, method, pattern):
    loaded, calib, windows, dense_state, _ = demo
    if method == "magnitude":    # its mask ignores the data: one window is enough for the per-layer error report
        calib = CalibrationSet(calib.input_ids[:1], calib.files, calib.seed)
    started = time.perf_counter()
    try:
        result = pipeline.prune(loaded, calib, PrunePlan.build(method=method, pattern=pattern,
                                                               sparsity=0.5 if pattern == "unstructured" else None))
        assert result.sparsity == pytest.approx(0.5, abs=1e-3) and result.skipped == []
        ppl = perplexity(loaded.model, windows, device="cpu").ppl
    finally:
        loaded.model.load_state_dict(dense_state)
    print(f"  {method:9s} {pattern:12s} ppl {ppl:8.2f}   ({time.perf_counter() - started:.0f} s)")
    return ppl


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_and_wanda_stay_close_to_dense_and_far_below_magnitude(demo, pattern):
    dense = demo[4]
    ppl = {method: pruned_perplexity(demo, method, pattern) for method in ("magnitude", "wanda", "sparsegpt")}
    winner = min(("wanda", "sparsegpt"), key=ppl.get)
    print(f"  {pattern}: {winner} wins; magnitude / best = {ppl['magnitude'] / ppl[winner]:.1f}×")
    assert dense < ppl["sparsegpt"] and dense < ppl["wanda"], ppl
    assert ppl["magnitude"] > 1.5 * ppl["sparsegpt"] and ppl["magnitude"] > 1.5 * ppl["wanda"], ppl
    state = demo[0].model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in demo[3].items())    # restored between methods
