"""`graphllm dump`: write a model's graph (text IR, DOT, SVG or JSON) before or after any pass; load_ir.

The graph is built from the model's config and weight shapes only (no weights are read), so
dumping needs no executor and no compiler.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..dsl.dot import render_svg, to_dot
from ..dsl.graph import Graph
from ..dsl.serialize import graph_to_json
from ..dsl.textir import parse_graph, print_graph
from ..errors import GraphBuildError, GraphLLMError

FORMATS = ("text", "dot", "svg", "json")


def add_dump_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `dump` subcommand to the `graphllm` command's subparsers."""
    p = subparsers.add_parser("dump", help="write the graph as text IR, DOT, SVG or JSON, before/after any pass")
    p.add_argument("-m", "--model", "-p", "--path", dest="model", default=None,
                   help="an HF folder or a .gguf file (default: SmolLM2-135M-Instruct, downloaded once)")
    p.add_argument("--custom", default=None, help="a ComputeGraph file whose __model__ replaces the built-in description")
    p.add_argument("--format", default="text", choices=FORMATS, help="text IR (default), Graphviz DOT, SVG "
                   "(needs Graphviz's `dot` and -o) or JSON")
    p.add_argument("--after", default=None, metavar="PASS",
                   help="stop after this pass ('input': the graph before any pass; default: the whole pipeline)")
    p.add_argument("--print-ir-after-all", default=None, metavar="DIR", type=Path,
                   help="also write the text IR before the first pass and after each pass into DIR (NN_pass.ir)")
    p.add_argument("-o", "--output", default=None, type=Path, help="file to write (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file or IR folder")
    p.set_defaults(func=cmd_dump)
    return p


def cmd_dump(a: argparse.Namespace) -> int:
    """Build the model's graph, run the passes and write it in the asked format."""
    from ..passes.manager import run_passes
    from ..runtime.llm import build_graph
    from ..io.loader import load_model, weight_types

    if a.format == "svg" and a.output is None:
        raise GraphLLMError("--format svg writes a binary file: give it with -o FILE.svg")
    if a.output is not None and a.output.exists() and not a.force:
        raise GraphLLMError(f"{a.output} exists; pass --force to overwrite it")
    ir_dir = a.print_ir_after_all
    if ir_dir is not None and not a.force and ir_dir.is_dir() and any(ir_dir.glob("*.ir")):
        raise GraphLLMError(f"{ir_dir} already holds .ir files; pass --force to overwrite them")
    model = load_model(a.model)
    notes: list[str] = []
    graph = build_graph(model.config, weight_types(model), a.custom, notes, passes=[])
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    graph = run_passes(graph, after=a.after, print_ir_after_all=ir_dir)
    if a.format == "svg":
        data: str | bytes = render_svg(to_dot(graph))
    elif a.format == "dot":
        data = to_dot(graph)
    elif a.format == "json":
        data = json.dumps(graph_to_json(graph), indent=1) + "\n"
    else:
        data = print_graph(graph)
    if a.output is None:
        sys.stdout.write(data)
        return 0
    try:
        with open(a.output, "wb" if a.force else "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    except FileExistsError:
        raise GraphLLMError(f"{a.output} exists; pass --force to overwrite it") from None
    print(f"wrote {a.output}", file=sys.stderr)
    return 0


def load_ir(path: str | Path) -> Graph:
    """A text IR file (e.g. from `graphllm dump`) parsed and verified, for `graphllm compile --ir FILE`.

    The graph is compiled as written (no other pass runs); a type the file states must be the
    type verify infers, so a hand edit that breaks shapes is caught here, not in a kernel.
    """
    from ..passes.verify import verify

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise GraphLLMError(f"{path}: cannot read the IR file ({e.strerror or e})") from None
    written = parse_graph(text, source=str(path))
    graph = verify(written)
    for node in written.order():
        stated, inferred = written[node]["type"], graph[node]["type"]
        if stated is not None and stated != inferred:
            raise GraphBuildError(f"{path}: {graph.where(node)} ({node}): the IR says {stated} but its inputs "
                                  f"give {inferred}")
    return graph
