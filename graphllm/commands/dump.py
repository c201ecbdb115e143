"""`graphllm dump`: write a model's graph (text IR, DOT, SVG or JSON) before or after any pass.

The graph is built from the model's config and weight shapes only (no weights are read), so dumping
needs no executor and no compiler; ``--dtype`` shows the quantized graph that would be compiled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import GraphLLMError
from ..pipeline import build
from ..tools.dump import FORMATS, render, slice_layers, write_new
from .common import add_command, add_graph_args, add_model_arg, graph_options, print_notes


def register(sub: argparse._SubParsersAction) -> None:
    """Add `dump` to the subcommands."""
    p = add_command(sub, "dump", "write the graph as text IR, DOT, SVG or JSON, before/after any pass")
    add_model_arg(p)
    add_graph_args(p)
    p.add_argument("--format", default="text", choices=FORMATS, help="text IR (default), Graphviz DOT, SVG "
                   "(needs Graphviz's `dot` and -o) or JSON")
    p.add_argument("--after", default=None, metavar="PASS",
                   help="stop after this pass ('input': the graph before any pass; default: the whole pipeline)")
    p.add_argument("--print-ir-after-all", default=None, metavar="DIR", type=Path,
                   help="also write the text IR before the first pass and after each pass into DIR (NN_pass.ir; "
                        "default: none)")
    p.add_argument("--layers", default=None, type=layers_arg, metavar="A-B",
                   help="draw only the nodes of layer A to B (or one layer N) and the values they read "
                        "(default: the whole graph)")
    p.add_argument("-o", "--output", default=None, type=Path, help="file to write (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file or IR folder")
    p.set_defaults(func=dump)


def layers_arg(value: str) -> range:
    """--layers: one layer N or an inclusive range A-B."""
    first, _, last = value.partition("-")
    if not (first.isdigit() and (last.isdigit() or not last)) or int(last or first) < int(first):
        raise argparse.ArgumentTypeError(f"expected a layer N or a range A-B (A <= B), got {value!r}")
    return range(int(first), int(last or first) + 1)


def dump(a: argparse.Namespace) -> int:
    """Build the model's graph through the pipeline and write it in the asked format."""
    if a.format == "svg" and a.output is None:
        raise GraphLLMError("--format svg writes a binary file: give it with -o FILE.svg")
    if a.output is not None and a.output.exists() and not a.force:
        raise GraphLLMError(f"{a.output} exists; pass --force to overwrite it")
    ir_dir = a.print_ir_after_all
    if ir_dir is not None and not a.force and ir_dir.is_dir() and any(ir_dir.glob("*.ir")):
        raise GraphLLMError(f"{ir_dir} already holds .ir files; pass --force to overwrite them")
    built = build(a.model, graph_options(a, after=a.after, print_ir_after_all=ir_dir))
    print_notes(built.notes)
    data = render(built.graph if a.layers is None else slice_layers(built.graph, a.layers), a.format)
    if a.output is None:
        sys.stdout.write(data)
        return 0
    write_new(a.output, data, a.force)
    print(f"wrote {a.output}", file=sys.stderr)
    return 0
