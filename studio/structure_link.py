"""Wires the Prune panel's structured shrink (studio/structure_options.py) to the controller's jobs: Shrink
starts `Controller.start_shrink` with the calibration panel's choice and, when its text is set, the Evaluate
panel's evaluation; the result and Export go back and forth. No widget here, no workflow: signals only."""

from __future__ import annotations

from dataclasses import replace


def connect_structure(window) -> None:
    options, c = window.run_panel.structure, window.controller

    def shrink(request) -> None:
        window.message_bar.hide()
        if request.evaluation is None and window.evaluate_panel.path.text().strip():
            request = replace(request, evaluation=window.evaluate_panel.choice())
        options.set_running(True)
        window.progress_panel.begin(f"structured shrink {request.spec.describe()} ({request.spec.criterion})")
        c.start_shrink(request, window.calibration_panel.choice())

    def finished(view) -> None:
        options.set_running(False)
        options.show_result(view)
        window.progress_panel.end(f"done: {view['summary']}")

    def failed(message: str) -> None:
        options.set_running(False)
        options.show_failure(message)
        window.progress_panel.end(f"shrink stopped: {message}")

    def export(folder: str) -> None:
        window.progress_panel.begin(f"export (hf) to {folder}")
        c.export_shrunk(folder)

    options.shrink_requested.connect(shrink)
    options.export_requested.connect(export)
    c.shrink_finished.connect(finished)
    c.shrink_failed.connect(failed)
