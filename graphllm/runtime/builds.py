"""The build cache: find, load or make the compiled build of a graph (GRAPHLLM_HOME/builds/<key>)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..codegen.tuning import TuningChoice, tuned_knobs
from ..dsl.graph import Graph
from ..errors import ModelLoadError
from ..host import cpu_flags, tvm_version
from ..io.download import graphllm_home
from ..plan import LIB_FILE, PLAN_FILE, PLAN_VERSION, graph_key
from .executor import CompiledExecutor, read_plan

CODEGEN_SOURCES = Path(__file__).parents[1] / "codegen"


@functools.lru_cache(maxsize=1)
def codegen_hash() -> str:
    """Hash of the code generator's sources (read as files, not imported): a changed kernel never reuses a build."""
    h = hashlib.sha256()
    for path in sorted(CODEGEN_SOURCES.rglob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cache_key(graph: Graph, target: dict[str, Any], dtype: str = "float32",
              knobs: Mapping[str, Any] | None = None) -> str:
    """What a build depends on: graph text, target, dtype, graphllm, TVM, plan format and code generator versions,
    and the knob values chosen over the defaults (tuned ones)."""
    text = json.dumps([graph_key(graph), target, dtype, __version__, tvm_version(), PLAN_VERSION, codegen_hash(),
                       *([knobs] if knobs else [])], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def host_target() -> dict[str, Any]:
    """The host's TVM target, remembered on disk per CPU and TVM version (detecting it imports TVM)."""
    ident = hashlib.sha256(" ".join(sorted(cpu_flags())).encode() + tvm_version().encode()).hexdigest()[:16]
    path = graphllm_home() / "targets" / f"{ident}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        from ..codegen.target import detect_target

        target = detect_target()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(target))
        os.replace(tmp, path)
        return target


def build_dir(graph: Graph, target: dict[str, Any] | None = None, knobs: Mapping[str, Any] | None = None) -> Path:
    """Where the build of a graph for a target (with these knob values) lives in the cache."""
    return graphllm_home() / "builds" / cache_key(graph, target or host_target(), knobs=knobs)


def packed_dir(build: Path, weights: Mapping[str, np.ndarray]) -> Path | None:
    """Where a build keeps the packed weights of one model file (by path, size and mtime)."""
    model = getattr(weights, "model", None)
    if model is None or not Path(model.path).exists():
        return None
    paths = [Path(model.path)] if Path(model.path).is_file() else sorted(Path(model.path).glob("*.safetensors"))
    ident = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    return build / "packed" / hashlib.sha256(ident.encode()).hexdigest()[:20]


def open_build(graph: Graph, weights: Mapping[str, np.ndarray], *, artifact: str | os.PathLike | None,
               max_context: int, num_slots: int, threads: int | None, notes: list[str],
               show_progress: bool = False, max_seqs: int | None = None,
               tuned: TuningChoice = True) -> CompiledExecutor:
    """A CompiledExecutor from an explicit artifact, else from the cache (built with the `tuned` database's
    knobs for this host); a bad cache entry is rebuilt."""
    kwargs = dict(max_context=max_context, num_slots=num_slots, threads=threads, max_seqs=max_seqs)
    if artifact is not None:
        kwargs["pack_cache"] = packed_dir(Path(artifact), weights)
        if read_plan(artifact).graph_key != graph_key(graph):
            raise ModelLoadError(f"the build in {artifact} was compiled for another model or model file; "
                                 f"recompile it with `graphllm compile` for this one")
        return CompiledExecutor(artifact, weights, **kwargs)
    target = host_target()
    chosen = tuned_knobs(graph, target, threads, tuned)
    notes.extend([chosen.note] if chosen.note else [])
    folder = build_dir(graph, target, chosen.knobs)
    kwargs["pack_cache"] = packed_dir(folder, weights)
    if (folder / PLAN_FILE).is_file() and (folder / LIB_FILE).is_file():
        try:
            executor = CompiledExecutor(folder, weights, **kwargs)
            notes.append(f"loaded the build from {folder}")
            return executor
        except (ModelLoadError, OSError, ValueError, KeyError, RuntimeError) as e:
            notes.append(f"the cached build {folder} is unusable ({e}); rebuilding")
    from ..codegen.compile import compile_graph

    compile_graph(graph, folder, target, show_progress=show_progress, knobs=chosen.knobs)
    notes.append(f"compiled the model's kernels into {folder}")
    return CompiledExecutor(folder, weights, **kwargs)
