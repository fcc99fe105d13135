"""The console script sends every engine subcommand to the command line, and nothing else."""

from core.cli.main import build_parser
from studio.launcher import SUBCOMMANDS


def test_every_cli_subcommand_reaches_the_cli():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == SUBCOMMANDS - {"-h", "--help"}
