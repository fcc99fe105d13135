"""Starting the window where none can open says what to do instead of Qt's abort."""

import sys

import pytest

from studio.app import display_problem, main


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is for X11/Wayland")
def test_no_display_gives_advice_and_exit_status_2(monkeypatch, capsys):
    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    assert "DISPLAY is not set" in display_problem()
    assert main(["--demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no display") and "xvfb-run" in err and "prune --help" in err


def test_an_explicit_qt_platform_is_trusted(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.delenv("DISPLAY", raising=False)
    assert display_problem() is None
