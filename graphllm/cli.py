"""The `graphllm` command: routes each subcommand to its module in graphllm/commands."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from . import __version__
from .commands.common import run_main

SUBCOMMANDS = ("run", "chat", "compile", "bench", "export", "eval", "dump", "serve", "check", "tune")


def build_parser(commands: Sequence[str] = SUBCOMMANDS) -> argparse.ArgumentParser:
    """The command line of these subcommands (all by default); each one's module is imported here."""
    parser = argparse.ArgumentParser(prog="graphllm", description="Describe an LLM as a compute graph; run it.")
    parser.add_argument("--version", action="version", version=f"graphllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in commands:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `graphllm` console script.

    A known subcommand's parser is built alone, so a run imports that command's modules only (not the server's,
    the checker's or the graph dumper's: a leaner process); anything else gets the whole command line.
    """
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"  # one line, as errors are
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser([args[0]] if args and args[0] in SUBCOMMANDS else SUBCOMMANDS)
    if not args:  # no arguments: the overview, as a successful answer
        parser.print_help()
        return 0
    a = parser.parse_args(args)
    return run_main(lambda: a.func(a))


if __name__ == "__main__":
    sys.exit(main())
