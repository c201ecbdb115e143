"""The pass manager: a registry of named passes (each Graph -> new Graph) and the pipeline that runs them.

``run_passes`` can write the text IR before the first pass and after every pass
(``--print-ir-after-all``: 00_input.ir, 01_verify.ir, ...), so a diff of two files shows what one
pass did, and can stop after a named pass (``--after``). ``quantize`` is the one pass with an option,
the weight dtype: given one, run_passes runs it after the fusions (which compare weight types), before
the final verify.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..dsl.graph import Graph
from ..errors import GraphLLMError
from .cse import cse
from .dce import dce
from .fold_constants import fold_constants
from .fuse_elementwise import fuse_elementwise
from .fuse_linear import fuse_act, fuse_norm, fuse_residual
from .fuse_qkv import fuse_qkv
from .fuse_rope import fuse_rope
from .fuse_swiglu import fuse_swiglu
from .merge_linears import merge_linears
from .quantize import quantize_weights
from .verify import verify

Pass = Callable[[Graph], Graph]
PASSES: dict[str, Pass] = {}
INPUT_STAGE = "input"  # `after=INPUT_STAGE` runs no pass: the graph as the front end built it
QUANTIZE = "quantize"


def register_pass(name: str) -> Callable[[Pass], Pass]:
    """Decorator adding a pass to PASSES under a name (new, and not the reserved 'input')."""
    def add(fn: Pass) -> Pass:
        if name in PASSES or name == INPUT_STAGE:
            raise ValueError(f"pass name {name!r} is taken")
        PASSES[name] = fn
        return fn
    return add


register_pass("verify")(verify)
register_pass("dce")(dce)
register_pass("cse")(cse)
register_pass("fold_constants")(fold_constants)
register_pass("fuse_swiglu")(fuse_swiglu)
register_pass("fuse_norm")(fuse_norm)
register_pass("fuse_act")(fuse_act)
register_pass("fuse_residual")(fuse_residual)
register_pass("fuse_rope")(fuse_rope)
register_pass("merge_linears")(merge_linears)
register_pass("fuse_qkv")(fuse_qkv)
register_pass("fuse_elementwise")(fuse_elementwise)
register_pass(QUANTIZE)(quantize_weights)  # run_passes gives it its dtype and notes

FUSION_PASSES = frozenset({"fuse_swiglu", "merge_linears", "fuse_norm", "fuse_act", "fuse_residual", "fuse_rope",
                           "fuse_qkv", "fuse_elementwise"})  # what --no-fuse leaves out
DEFAULT_PIPELINE: list[str] = ["verify", "dce", "fold_constants", "cse", "fuse_swiglu", "merge_linears", "fuse_norm",
                               "fuse_act", "fuse_residual", "fuse_rope", "fuse_qkv", "fuse_elementwise", "verify"]


def _check_known(name: str) -> None:
    if name not in PASSES:
        raise GraphLLMError(f"unknown pass {name!r} (known passes: {', '.join(PASSES)})")


def run_passes(graph: Graph, names: list[str] | None = None, *, print_ir_after_all: Path | None = None,
               after: str | None = None, dtype: str | None = None, notes: list[str] | None = None) -> Graph:
    """Run a pipeline of passes (default: DEFAULT_PIPELINE), optionally writing the IR after each one.

    ``after`` stops after the first run of that pass ('input' runs none); ``print_ir_after_all``
    is a folder (created if needed) that gets NN_<pass>.ir files, 00_input.ir first. ``dtype`` is
    the quantize pass's (see quantize_weights; ``notes`` gets its notes): a pipeline that does not
    name 'quantize' runs it before its final verify (or last).
    """
    pipeline = list(DEFAULT_PIPELINE if names is None else names)
    if dtype is not None and QUANTIZE not in pipeline:
        pipeline.insert(len(pipeline) - (pipeline[-1:] == ["verify"]), QUANTIZE)
    for name in pipeline:
        _check_known(name)
    if dtype is None and QUANTIZE in pipeline:
        raise GraphLLMError(f"pass {QUANTIZE!r} needs a weight dtype (--dtype int8, int4g<GROUP>, float16, ...)")
    if after == INPUT_STAGE:
        pipeline = []
    elif after is not None:
        _check_known(after)
        if after not in pipeline:
            raise GraphLLMError(f"pass {after!r} is not in the pipeline ({', '.join(pipeline) or 'empty'})")
        pipeline = pipeline[:pipeline.index(after) + 1]
    if print_ir_after_all is not None:
        from ..dsl.textir import print_graph  # the text IR (and lark) only when dumping: a run never loads them

        print_ir_after_all = Path(print_ir_after_all)
        print_ir_after_all.mkdir(parents=True, exist_ok=True)
        (print_ir_after_all / f"00_{INPUT_STAGE}.ir").write_text(print_graph(graph), encoding="utf-8")
    for i, name in enumerate(pipeline, 1):
        graph = PASSES[name](graph, dtype, notes=notes) if name == QUANTIZE else PASSES[name](graph)
        if print_ir_after_all is not None:
            (print_ir_after_all / f"{i:02d}_{name}.ir").write_text(print_graph(graph), encoding="utf-8")
    return graph
