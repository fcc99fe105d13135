"""Starting the window or the command line does not import the optional heavy libraries that only some
jobs use (lm-eval for zero-shot tasks, matplotlib for chart files, Ray for cluster sweeps): each costs
seconds at start. They are imported by the job that needs them, which the zero-shot and sweep tests run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("lm_eval", "matplotlib", "ray")
PROBE = ("import sys, core.cli.main, studio.main_window; "
         f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")


def test_the_window_and_the_cli_start_without_the_optional_heavy_libraries():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    import importlib.util
    assert importlib.util.find_spec("lm_eval") is not None      # installed: its absence above is laziness
