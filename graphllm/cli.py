"""The `graphllm` command: routes each subcommand to its module in graphllm/commands."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from . import __version__
from .commands import bench, chat, check, compile, dump, eval, export, run, serve, tune
from .commands.common import run_main

SUBCOMMANDS = (run, chat, compile, bench, export, eval, dump, serve, check, tune)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="graphllm", description="Describe an LLM as a compute graph; run it.")
    parser.add_argument("--version", action="version", version=f"graphllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `graphllm` console script."""
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"  # one line, as errors are
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # no arguments: the overview, as a successful answer
        parser.print_help()
        return 0
    a = parser.parse_args(argv)
    return run_main(lambda: a.func(a))


if __name__ == "__main__":
    sys.exit(main())
