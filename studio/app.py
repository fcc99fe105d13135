"""Start the studio: `compression-studio` (no subcommand) or `python -m studio`.

`--demo` opens the demo model at start; `--model SPEC` opens any model. `--screenshot PATH` then
runs Wanda on a small calibration, measures perplexity on a few windows, renders the window to a
PNG and exits — the README's picture is made this way.
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
    parser.add_argument("--tab", choices=("layer", "overview", "runs", "benchmark"), default="layer",
                        help="which view --screenshot shows")
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


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    style_application(app)
    from .main_window import MainWindow

    window = MainWindow()
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
                                  args.screenshot, tab=("layer", "overview", "runs", "benchmark").index(args.tab))
        window.show()
        driver.start()
        app.exec()
        return driver.status
    window.show()
    if spec:
        window.open_model(spec)
    return app.exec()
