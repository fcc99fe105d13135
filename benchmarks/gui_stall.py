"""Does the studio's window stay responsive while it prunes? Opens the studio offscreen on the demo
model, runs Wanda through the GUI (calibration 8 × 256 tokens of WikiText-2 valid by default) and
records, with a 5 ms QTimer, every gap in the GUI event loop from pressing Run to the run's end.
Prints one JSON line: max_stall_ms, p99_stall_ms (gaps between timer ticks, the 5 ms included).
`--preload` tokenizes the calibration first (the Load button) and records only the run itself.

    OMP_WAIT_POLICY=PASSIVE QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/gui_stall.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PySide6.QtCore import QObject, QSettings, QTimer, Slot  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from studio.app import find_wikitext, style_application  # noqa: E402
from studio.main_window import MainWindow  # noqa: E402

TICK_MS = 5


class Probe(QObject):
    """Records the time between consecutive ticks of a short timer while `recording` is on."""

    def __init__(self):
        super().__init__()
        self.gaps, self.recording, self.last = [], False, None
        self.worst = []          # (gap ms, what the GUI last heard) for --explain
        self.heard = "start"
        self.timer = QTimer(self, interval=TICK_MS)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    @Slot()
    def tick(self):
        now = time.perf_counter()
        if self.recording and self.last is not None:
            self.gaps.append((now - self.last) * 1000)
            if self.gaps[-1] > 50:
                self.worst.append((round(self.gaps[-1], 1), self.heard))
        self.last = now


class Driver(QObject):
    def __init__(self, window, probe, calib, nsamples, seqlen, method, preload=False):
        super().__init__()
        self.window, self.probe, self.preload = window, probe, preload
        self.calib, self.nsamples, self.seqlen, self.method = calib, nsamples, seqlen, method
        self.result, self.started, self.explain = None, None, False
        c = window.controller
        c.model_opened.connect(self.opened)
        c.run_finished.connect(self.finished)
        c.error.connect(self.failed)
        c.progress.connect(self.heard)

    @Slot(object)
    def heard(self, event):
        self.probe.heard = f"{type(event).__name__} {getattr(event, 'name', '')} {getattr(event, 'detail', '')}".strip()

    @Slot(object)
    def opened(self, loaded):
        w = self.window
        w.calibration_panel.add_files([self.calib])
        w.calibration_panel.nsamples.setValue(self.nsamples)
        w.calibration_panel.seqlen.setValue(self.seqlen)
        w.run_panel.method.setCurrentText(self.method)
        w.run_panel.sparsity.setValue(0.5)
        w.run_panel.device.setCurrentIndex(w.run_panel.device.findData("cpu"))
        if self.preload:
            w.controller.calibration_ready.connect(self.calibrated)
            w.load_calibration(w.calibration_panel.choice())
        else:
            QTimer.singleShot(300, self.press_run)

    @Slot(object)
    def calibrated(self, calib):
        if self.started is None:         # the Load button's calibration; the run announces it again
            self.started = 0.0
            QTimer.singleShot(300, self.press_run)

    def press_run(self):
        self.probe.recording, self.probe.last = True, None
        self.started = time.perf_counter()
        self.window.start_run()

    @Slot(object)
    def finished(self, record):
        self.probe.recording = False
        gaps = np.array(self.probe.gaps)
        self.result = {"benchmark": "gui_stall", "method": self.method, "calibration": f"{self.nsamples}x{self.seqlen}",
                       "recorded": "the run alone" if self.preload else "Run pressed: tokenizing, then the run",
                       "run_seconds": round(time.perf_counter() - self.started, 2), "ticks": int(gaps.size),
                       "tick_ms": TICK_MS, "max_stall_ms": round(float(gaps.max()), 1),
                       "p99_stall_ms": round(float(np.percentile(gaps, 99)), 1),
                       "median_gap_ms": round(float(np.median(gaps)), 1), "layers": len(record.result.layers)}
        if self.explain:
            self.result["stalls_over_50ms"] = self.probe.worst
        QTimer.singleShot(0, self.window.close)

    @Slot(str)
    def failed(self, message):
        print(f"gui_stall: {message}", file=sys.stderr)
        self.window.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--calib", default=find_wikitext("wiki.valid.raw"))
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--explain", action="store_true", help="list every gap over 50 ms with the last event before it")
    parser.add_argument("--preload", action="store_true", help="tokenize the calibration before pressing Run")
    args = parser.parse_args(argv)
    if not args.calib:
        parser.error("no calibration text found: pass --calib FILE")
    app = QApplication.instance() or QApplication([])
    style_application(app)
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "bench.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.resize(1600, 980)
    window.show()
    probe = Probe()
    driver = Driver(window, probe, args.calib, args.nsamples, args.seqlen, args.method, args.preload)
    driver.explain = args.explain
    window.open_model(args.model)
    app.lastWindowClosed.connect(app.quit)
    app.exec()
    if driver.result is None:
        return 1
    print(json.dumps(driver.result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
