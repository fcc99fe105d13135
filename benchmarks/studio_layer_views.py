"""How fast does the studio show a big layer? Time from selecting a 4096 × 14336 layer in the tree
(random weights, half of them zero, as after a 50% run) to its histograms and mask heatmap being
drawn: the reduction runs on the worker thread, the drawing in the GUI thread. Prints JSON.

    OMP_WAIT_POLICY=PASSIVE QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/studio_layer_views.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from core.models.architectures import find_layout  # noqa: E402
from core.models.loaded import LoadedModel  # noqa: E402
from studio.app import style_application  # noqa: E402
from studio.main_window import MainWindow  # noqa: E402

ROWS, COLS = 4096, 14336


def llama_with_one_real_block():
    """One Llama-8B-sized block: down_proj is 4096 × 14336 (and up_proj 14336 × 4096)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=ROWS, intermediate_size=COLS, num_hidden_layers=1,
                         num_attention_heads=32, num_key_value_heads=8)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for name in ("down_proj", "up_proj"):
            weight = getattr(model.model.layers[0].mlp, name).weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02)
            weight.masked_fill_(torch.rand(weight.shape, generator=generator) < 0.5, 0)
    return LoadedModel(model, None, "random 4096×14336", "folder", None, find_layout(model))


def as_if_pruned(window, names):
    """Give the workbench the summaries a run computes on its worker (`core.analysis.summaries.summarize`)."""
    from core.analysis import summaries, views as layer_views
    from core.pruning.methods import MethodResult
    from core.pruning.pipeline import PruneResult
    from core.pruning.plan import PrunePlan
    from core.workbench import RunRecord

    loaded = window.controller.loaded
    views = {}
    for name in names:
        weight = layer_views.current_weight(loaded, name)
        mask = weight == 0
        dense = weight.masked_fill(mask, 0.01)
        outcome = MethodResult(weight, mask, dense.abs())
        views[name] = layer_views.run_view(name, weight.shape, summaries.summarize(dense, outcome), "magnitude")
    plan = PrunePlan.build(method="magnitude")
    window.controller.bench.applied = RunRecord(1, plan, PruneResult(plan, "cpu", [], [], 0.0), {}, views)


def time_selection(app, window, name) -> float:
    shown = []
    window.controller.layer_view_ready.connect(lambda view: shown.append(view.name))
    started = time.perf_counter()
    window.layer_tree.select(name)
    while name not in shown:
        app.processEvents()
        time.sleep(0.0005)
    window.tabs.currentWidget().repaint()     # draw both views now, not at the next paint event
    app.processEvents()
    window.controller.layer_view_ready.disconnect()
    window.controller.layer_view_ready.connect(window._show_layer_view)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    app = QApplication.instance() or QApplication([])
    style_application(app)
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "bench.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1600, 980)
    window.show()
    window.controller.bench.loaded = llama_with_one_real_block()
    window.controller.model_opened.emit(window.controller.bench.loaded)
    app.processEvents()
    down, up, other = "model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.k_proj"
    time_selection(app, window, other)
    first_dense = [time_selection(app, window, down)]      # nothing cached: read on the views thread
    for _ in range(4):
        window.controller.bench.previews.clear()
        time_selection(app, window, other)
        first_dense.append(time_selection(app, window, down))
    assert window.histograms.view.row_stride > 1
    as_if_pruned(window, [down, up])
    timings = {down: [], up: []}
    for _ in range(5):
        for name in (down, up):
            time_selection(app, window, other)        # select something else first
            timings[name].append(time_selection(app, window, name))
    assert window.heatmap.name == up and window.histograms.view.shape == (COLS, ROWS) and window.histograms.view.pruned
    result = {"benchmark": "studio_layer_views", "shape": [ROWS, COLS], "selections": 5,
              "pruned_layer_median_ms": round(statistics.median(timings[down]), 1),
              "pruned_layer_max_ms": round(max(timings[down]), 1),
              "pruned_transposed_median_ms": round(statistics.median(timings[up]), 1),
              "dense_first_view_median_ms": round(statistics.median(first_dense), 1),
              "dense_first_view_max_ms": round(max(first_dense), 1),
              "dense_row_stride": window.controller.bench.previews[(down, 0.5)].row_stride,
              "torch_threads": torch.get_num_threads(), "target_ms": 200}
    window.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
