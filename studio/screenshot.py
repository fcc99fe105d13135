"""Drive the window through open → Wanda run (optionally with OWL's allocation, a recovery and a
quantization) → perplexity → PNG, for the README's picture; `tab="export"` pictures the Export dialog."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, QTimer, Slot
from PySide6.QtWidgets import QApplication

from core.kernels.benchmark import BenchOptions
from core.workbench import EvaluationRequest

SHOWN_LAYER = "mlp.down_proj"


class ScreenshotDriver(QObject):
    def __init__(self, window, spec: str, calib: list[str], eval_path: str | None, out: str,
                 nsamples: int = 16, seqlen: int = 256, tab: str = "layer", allocation: str = "uniform",
                 recovery: str = "none", quantize: str | None = None):
        super().__init__(window)
        self.window, self.spec, self.calib, self.eval_path, self.out = window, spec, calib, eval_path, out
        self.nsamples, self.seqlen, self.tab = nsamples, seqlen, tab
        self.allocation, self.recovery, self.quantize = allocation, recovery, quantize
        self.dialog = None
        self.status = 1
        c = window.controller
        c.model_opened.connect(self._opened)
        c.run_finished.connect(self._ran)
        c.evaluation_done.connect(self._evaluated)
        c.error.connect(self._failed)
        c.bench_finished.connect(lambda report: QTimer.singleShot(500, self._grab))

    def start(self) -> None:
        self.window.open_model(self.spec)

    @Slot(object)
    def _opened(self, loaded) -> None:
        w = self.window
        w.calibration_panel.add_files(self.calib)
        w.calibration_panel.nsamples.setValue(self.nsamples)
        w.calibration_panel.seqlen.setValue(self.seqlen)
        w.run_panel.method.setCurrentText("wanda")
        w.run_panel.pattern.setCurrentText("unstructured")
        w.run_panel.sparsity.setValue(0.5)
        w.run_panel.allocation.setCurrentIndex(w.run_panel.allocation.findData(self.allocation))
        w.run_panel.recovery.setCurrentIndex(w.run_panel.recovery.findData(self.recovery))
        if self.quantize:
            w.run_panel.quantize.bits.setCurrentIndex(w.run_panel.quantize.bits.findText(self.quantize))
        middle = loaded.layout.inventory[len(loaded.layout.inventory) // 2]
        w.layer_tree.select(next(l.full_name for l in middle.linears if l.name.endswith(SHOWN_LAYER)))
        if self.tab in ("sensitivity", "edit-allocation"):     # a fast profile by layer instead of a run
            w.controller.profile_finished.connect(self._profiled)
            w.tabs.setCurrentWidget(w.profile_panel)
            w.profile_panel.fast.setChecked(True)
            w.profile_panel.start_button.click()
            return
        w.start_run()

    @Slot(object)
    def _ran(self, record) -> None:
        if self.eval_path:
            self.window.evaluate_panel.path.setText(self.eval_path)
            self.window.evaluate_panel.seqlen.setValue(self.seqlen)
            self.window.evaluate_panel.windows.setValue(8)
            self.window.evaluate(EvaluationRequest(self.eval_path, self.seqlen, 8))
        else:
            QTimer.singleShot(500, self._save)

    @Slot(object)
    def _profiled(self, _profile) -> None:
        w = self.window
        if self.tab == "edit-allocation":                       # the profile's allocation, one block set by hand
            w.profile_panel.use_button.click()
            w.allocation_editor.set_block(len(w.allocation_editor.params) // 2, 0.3)
        QTimer.singleShot(500, self._grab)

    @Slot(object)
    def _evaluated(self, _outcome) -> None:
        QTimer.singleShot(500, self._save)

    @Slot(str)
    def _failed(self, message: str) -> None:
        print(f"screenshot: {message}", file=sys.stderr)
        self.window.close()
        QApplication.instance().quit()

    def _save(self) -> None:
        w = self.window
        if self.quantize:                    # the Prune panel scrolled to its Quantize section
            w.control_tabs.currentWidget().ensureWidgetVisible(w.run_panel.quantize)
        if self.tab == "export":
            from .export_dialog import ExportDialog

            w.controller.export_sizes_ready.connect(lambda _: QTimer.singleShot(500, self._grab))
            self.dialog = ExportDialog.for_run(w, w.controller, "exported-model")
            self.dialog.show()
            return
        views = {"layer": 0, "overview": w.overview, "allocation": w.allocation, "recovery": w.recovery,
                 "runs": w.history, "benchmark": w.bench, "sweep": w.sweep_panel}
        view = views[self.tab]
        if isinstance(view, int):
            w.tabs.setCurrentIndex(view)
        else:
            w.tabs.setCurrentWidget(view)
        if self.tab == "benchmark":          # a quick CPU-sized benchmark, then the picture
            self.window.bench.tokens.setText("1,16,128,512")
            self.window.start_benchmark(BenchOptions(tokens=(1, 16, 128, 512), end_to_end=True, new_tokens=8,
                                                     prompt_tokens=32, budget_s=0.1))
            return
        if self.tab == "runs" and self.window.selected_layer:
            self.window.history.table.selectAll()
            self.window.history.compare_button.click()
            QTimer.singleShot(1500, self._grab)
            return
        self._grab()

    def _grab(self) -> None:
        QApplication.processEvents()
        ok = (self.dialog or self.window).grab().save(self.out)
        print(f"saved {self.out}" if ok else f"could not write {self.out}", file=sys.stderr)
        self.status = 0 if ok else 1
        if self.dialog is not None:
            self.dialog.close()
        self.window.close()
        QApplication.instance().quit()
