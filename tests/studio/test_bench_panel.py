"""The Benchmark tab's choices reach the engine's options; a row says whether it was checked and what limits it."""

from __future__ import annotations

import pytest

from core.kernels.benchmark import BenchOptions
from core.kernels.results import KernelResult

pytest.importorskip("pytestqt")


def test_choices_become_options_and_rows_show_check_and_limit(qtbot):
    from studio.bench_panel import COLUMNS, BenchPanel

    panel = BenchPanel()
    qtbot.addWidget(panel)
    panel.price.setValue(3.5)
    panel.fp8.setChecked(False)
    options = BenchOptions.from_choices(**panel.choices())
    assert options.gpu_price == 3.5 and options.fp8 is False
    row = KernelResult((14336, 4096), 2, 2048, "bf16", "cusparselt-direct", "cuda:0", "ok", median_ms=0.5,
                       speedup=1.4, rel_error=2e-3, checked=True, host_ms=0.02, kernel_ms=0.45, limited_by="kernel",
                       plan="alg 3, split-k 1")
    panel.add_result(row)
    cells = {name: panel.table.item(0, i).text() for i, name in enumerate(COLUMNS)}
    assert cells["Checked"] == "yes" and cells["Limit"] == "kernel (host 0.020, GPU 0.450 ms)"
    assert cells["Note"].startswith("alg 3, split-k 1") and cells["Speedup"] == "1.40×"
