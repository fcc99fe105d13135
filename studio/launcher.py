"""The `compression-studio` console script: no subcommand (or only studio options) opens the studio,
a subcommand runs the engine's command line. Qt is imported only in the first case."""

from __future__ import annotations

import sys

SUBCOMMANDS = {"prune", "quantize", "eval", "profile", "sweep", "inspect", "bench", "unpack", "-h", "--help"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        from core.cli import main as cli_main

        return cli_main(argv)
    from studio.app import main as studio_main

    return studio_main(argv)


if __name__ == "__main__":
    sys.exit(main())
