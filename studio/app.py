"""Start the studio: `compression-studio` (no subcommand) or `python -m studio`.

`--demo` opens the demo model at start; `--model SPEC` opens any model. `--screenshot PATH` then
runs Wanda on a small calibration, measures perplexity on a few windows, renders the window to a
PNG and exits — the README's picture is made this way.

A bug raised on the window's thread (a slot drawing a result) is logged and shown in the window's message
bar, like a bug in an engine job (`install_crash_handler`); the window goes on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ORGANIZATION = "CompressionStudio"
APPLICATION = "Compression Studio"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
WIKITEXT = ("wiki.valid.raw", "wiki.test.raw")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="compression-studio", description="Open the Compression Studio window.")
    parser.add_argument("--demo", action="store_true", help="open the demo model (SmolLM2-135M) at start")
    parser.add_argument("--model", help="open this model at start (folder, .gguf, hub id or 'demo')")
    parser.add_argument("--screenshot", metavar="PATH", help="run Wanda, save the window as a PNG, and exit")
    parser.add_argument("--calib", nargs="+", metavar="FILE", help="calibration files (default: WikiText-2 valid, if found)")
    parser.add_argument("--eval", metavar="FILE", help="perplexity text for --screenshot (default: WikiText-2 test, if found)")
    parser.add_argument("--size", default="1600x980", help="window size for --screenshot, WIDTHxHEIGHT")
    parser.add_argument("--tab", choices=("layer", "overview", "allocation", "recovery", "runs", "benchmark", "export",
                                          "sensitivity", "edit-allocation", "sweep"),
                        default="layer", help="which view --screenshot shows (export: the Export dialog alone)")
    parser.add_argument("--quantize", choices=("int4", "int8"), help="quantize the --screenshot run (GPTQ)")
    parser.add_argument("--allocation", choices=("uniform", "owl"),
                        help="the run's allocation for --screenshot (default: owl for --tab allocation, else uniform)")
    parser.add_argument("--recover", choices=("none", "blockwise", "e2e"),
                        help="the run's recovery for --screenshot (default: blockwise for --tab recovery, else none)")
    return parser.parse_args(argv)


def find_wikitext(name: str) -> str | None:
    """The shared WikiText-2 copy next to the checkout (../shared/data/...), if there is one."""
    here = Path(__file__).resolve().parent.parent
    for root in (here, *here.parents):
        candidate = root / "shared" / "data" / "wikitext-2-raw" / name
        if candidate.is_file():
            return str(candidate)
    return None


def style_application(app) -> None:
    from PySide6.QtGui import QIcon

    qss = RESOURCES / "studio.qss"
    if qss.is_file():
        app.setStyleSheet(qss.read_text())
    icon = RESOURCES / "icon.png"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))


def display_problem() -> str | None:
    """Why no window can open here, in words a user can act on; None when a display looks usable.

    Qt's own failure is an abort with a message about "platform plugins"; this says what to do instead.
    """
    import ctypes.util
    import os

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("no display: DISPLAY is not set. Run on a desktop session, under a virtual screen "
                "(xvfb-run compression-studio ...), or use the command line (compression-studio prune --help).")
    if os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        missing = [lib for lib in ("xcb-cursor", "xcb-icccm", "xcb-keysyms") if ctypes.util.find_library(lib) is None]
        if missing:
            packages = " ".join(f"lib{lib}{'0' if lib == 'xcb-cursor' else '4' if lib == 'xcb-icccm' else '1'}"
                                for lib in missing)
            return f"Qt needs the X libraries {', '.join(missing)}: install them (Debian/Ubuntu: apt-get install {packages})."
    return None


def install_crash_handler(window) -> None:
    """Route exceptions that reach the top of the GUI thread (PySide hands an exception raised in a slot to
    `sys.excepthook`) to the crash log and the window's message bar, instead of a traceback on stderr."""
    from core.errors import UserError

    from .worker import report_bug

    def hook(kind, exc, tb):
        if not issubclass(kind, Exception):          # KeyboardInterrupt, SystemExit: Python's own handling
            return sys.__excepthook__(kind, exc, tb)
        try:
            if isinstance(exc, UserError):
                window.show_error(str(exc))
            else:
                window.show_error(report_bug(exc.with_traceback(tb), "an update of the window", "studio window (GUI thread)"))
        except Exception:                            # the window itself is gone: at least the traceback
            sys.__excepthook__(kind, exc, tb)

    sys.excepthook = hook


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    problem = display_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    style_application(app)
    from .main_window import MainWindow

    window = MainWindow()
    install_crash_handler(window)
    spec = "demo" if args.demo else args.model
    if args.screenshot:
        from .screenshot import ScreenshotDriver

        calib = args.calib or [p for p in [find_wikitext(WIKITEXT[0])] if p]
        if not calib:
            print("--screenshot needs calibration text: pass --calib FILE", file=sys.stderr)
            return 2
        width, height = (int(v) for v in args.size.lower().split("x"))
        window.resize(width, height)
        driver = ScreenshotDriver(window, spec or "demo", calib, args.eval or find_wikitext(WIKITEXT[1]),
                                  args.screenshot, tab=args.tab,
                                  allocation=args.allocation or ("owl" if args.tab == "allocation" else "uniform"),
                                  recovery=args.recover or ("blockwise" if args.tab == "recovery" else "none"),
                                  quantize=args.quantize)
        window.show()
        driver.start()
        app.exec()
        return driver.status
    window.show()
    if spec:
        window.open_model(spec)
    return app.exec()
