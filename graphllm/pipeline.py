"""The front door: a model (built-in, a ``--custom`` file, or text IR) -> graph -> passes -> graph + weights.

Every command that needs a graph (run, chat, serve, compile, bench, dump, check, export, eval, the Python
API) goes through :func:`build`, so the recipe (trace, passes, quantization, weight source) is written
once and a quantized graph dumps, checks and compiles exactly as it runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GraphBuildError, GraphLLMError
from .passes.kv_dtype import DEFAULT_KV_DTYPE

if TYPE_CHECKING:  # the graph, the passes and the model readers load when a graph is built: a warm start builds none
    from .dsl.graph import ComputeGraph, Graph
    from .dsl.types import TensorType
    from .io.loader import LoadedModel, WeightSource


@dataclass(frozen=True)
class GraphOptions:
    """What to build: the description, the pass pipeline, the weights' and the KV cache's dtypes (all optional)."""

    custom: str | os.PathLike | None = None  # a ComputeGraph file replacing the built-in description
    ir: str | os.PathLike | None = None  # a text IR file compiled as written (no pass but verify)
    dtype: str | None = None  # None: weights as stored (blocks and 16-bit matrices kept)
    passes: list[str] | None = None  # None: the default pipeline
    no_fuse: bool = False  # leave the merge/fuse passes out
    after: str | None = None  # stop after this pass ('input': before any)
    print_ir_after_all: Path | None = None  # write NN_pass.ir files into this folder
    kv_dtype: str | None = None  # the KV cache's element type (f16/float16, f32/float32); None: DEFAULT_KV_DTYPE

    def pipeline(self) -> list[str] | None:
        """The pass names to run (None = the default pipeline)."""
        if not self.no_fuse:
            return self.passes
        from .passes.manager import DEFAULT_PIPELINE, FUSION_PASSES

        return [p for p in (self.passes or DEFAULT_PIPELINE) if p not in FUSION_PASSES]


@dataclass
class Built:
    """A model made ready to compile or run: its graph, the weights as the graph wants them, notes to show."""

    graph: Graph
    model: LoadedModel | None  # None for a text IR built without a model
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> WeightSource:
        """The model's weights as the graph's Weight nodes want them (needs a model)."""
        if self.model is None:
            raise GraphLLMError("this graph was read from text IR without a model: give the model with -m")
        return weight_source(self.model, self.graph)


def build_graph(config: dict[str, Any], weight_types: dict[str, TensorType],
                custom: str | os.PathLike | None = None, notes: list[str] | None = None,
                passes: list[str] | None = None, *, dtype: str | None = None, after: str | None = None,
                print_ir_after_all: Path | None = None, kv_dtype: str = DEFAULT_KV_DTYPE) -> Graph:
    """Trace the description (the custom file, else the built-in one for the config), give its attention ops
    the ``kv_dtype`` cache and run the passes (quantization to ``dtype`` among them).

    The traced graph is verified before any pass (every later layer needs the inferred types).
    """
    from .dsl.graph import trace
    from .dsl.modelfile import load_model_file
    from .models import builtin_model, check_sizes
    from .passes.kv_dtype import set_kv_dtype
    from .passes.manager import run_passes
    from .passes.verify import verify

    check_sizes(config, weight_types)
    description: type[ComputeGraph] = load_model_file(custom) if custom else builtin_model(config)
    traced = set_kv_dtype(verify(trace(description, config, weight_types, notes=notes)), kv_dtype)
    return run_passes(traced, passes, after=after, print_ir_after_all=print_ir_after_all, dtype=dtype, notes=notes)


def weight_source(model: LoadedModel, graph: Graph) -> WeightSource:
    """The weights as the graph's Weight nodes want them (types, derived concatenations, folded constants)."""
    from .dsl.graph import WEIGHT_OP
    from .io.loader import WeightSource

    nodes = [graph[n] for n in graph.nodes_of(WEIGHT_OP)]
    return WeightSource(model, {d["name"]: d["type"] for d in nodes},
                        {d["name"]: d["attrs"]["concat"] for d in nodes if d["attrs"].get("concat")},
                        {d["name"]: d["attrs"]["fold"] for d in nodes if d["attrs"].get("fold")})


def load_ir(path: str | os.PathLike) -> Graph:
    """A text IR file (e.g. from `graphllm dump`) parsed and verified, compiled as written (no other pass).

    A type the file states must be the type verify infers, so a hand edit that breaks shapes is caught
    here, not in a kernel.
    """
    from .dsl.textir import parse_graph  # lark only for an IR file: a model's run never loads it
    from .passes.verify import verify

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


def build(model: LoadedModel | str | os.PathLike | None, options: GraphOptions = GraphOptions(), *,
          need_model: bool = True) -> Built:
    """The model's graph after the pipeline and quantization (or the IR file's graph), with its weights.

    ``model`` is a loaded model or a path (None: the default model). With ``options.ir`` and
    ``need_model=False`` no model is loaded (e.g. compiling an IR file needs only the graph).
    """
    notes: list[str] = []
    if options.ir is not None:
        ignored = [flag for flag, value in (("--custom", options.custom), ("--dtype", options.dtype),
                                            ("--passes", options.passes), ("--no-fuse", options.no_fuse),
                                            ("--kv-dtype", options.kv_dtype)) if value]
        if ignored:
            raise GraphLLMError(f"the IR file is compiled as written: drop {', '.join(ignored)} (they shape the "
                                f"graph, which the IR already fixes)")
        graph = load_ir(options.ir)
        loaded = _load(model) if need_model or model is not None else None
        return Built(graph, loaded, notes)
    from .io.loader import weight_types

    loaded = _load(model)
    graph = build_graph(loaded.config, weight_types(loaded, native=options.dtype is None), options.custom, notes,
                        options.pipeline(), dtype=options.dtype, after=options.after,
                        print_ir_after_all=options.print_ir_after_all, kv_dtype=options.kv_dtype or DEFAULT_KV_DTYPE)
    return Built(graph, loaded, notes)


def _load(model: LoadedModel | str | os.PathLike | None) -> LoadedModel:
    from .io.loader import LoadedModel, load_model

    return model if isinstance(model, LoadedModel) else load_model(model)
