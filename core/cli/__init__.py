"""`compression-studio prune|quantize|eval|inspect|bench|unpack`: the engine from the command line.

The console script is `studio.launcher:main`, which opens the studio when no subcommand is given
and hands everything else to `main` here, so the engine never imports the Qt layer.

This module only parses arguments, draws progress and prints results; every step is an engine
function the studio and the tests call too. A `UserError` ends the command with exit status 2
and one line on stderr, before anything is written.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
