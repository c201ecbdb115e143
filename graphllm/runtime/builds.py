"""The build cache: find, load or make the compiled build of a graph (GRAPHLLM_HOME/builds/<key>).

An entry is compiled into a temporary folder and renamed into place under a per-key file lock, so a second
process waits for the first one's build and then uses it. Every file of an entry is checked against the
checksum recorded when it was written before it is used (graphllm/plan.py); an entry that fails to load in
any way is replaced whole with a one-line warning. Nothing outside GRAPHLLM_HOME/builds/<key> is deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .. import __version__
from ..errors import ModelLoadError
from ..host import cpu_flags, tvm_version
from ..io.cache import digest, file_lock, read_checked_json, tree_digest, write_checked_json
from ..io.download import graphllm_home
from ..plan import ARTIFACT, PLAN_VERSION, DamagedBuild, ModelRef, Plan, graph_key, read_build
from .executor import CompiledExecutor

if TYPE_CHECKING:
    from ..codegen.tuning import TuningChoice
    from ..dsl.graph import Graph

log = logging.getLogger(__name__)

CODEGEN_SOURCES = Path(__file__).parents[1] / "codegen"
CACHE_ENTRY = dataclasses.replace(ARTIFACT, what="cached build", whole=True)  # graphllm's own: replaced whole


@functools.lru_cache(maxsize=1)
def codegen_hash() -> str:
    """Hash of the code generator's sources, Python and the step driver's C (read as files, not imported): a changed
    kernel or driver never reuses a build."""
    return tree_digest(CODEGEN_SOURCES, (".py", ".c"), 16)


def cache_key(graph: Graph, target: dict[str, Any], dtype: str = "float32",
              knobs: Mapping[str, Any] | None = None) -> str:
    """What a build depends on: graph text, target, dtype, graphllm, TVM, plan format and code generator versions,
    and the knob values chosen over the defaults (tuned ones)."""
    text = json.dumps([graph_key(graph), target, dtype, __version__, tvm_version(), PLAN_VERSION, codegen_hash(),
                       *([knobs] if knobs else [])], sort_keys=True, default=str)
    return digest(text, 24)


def host_target() -> dict[str, Any]:
    """The host's TVM target, remembered on disk per CPU and TVM version (detecting it imports TVM).

    The file carries a checksum of its body; a damaged or implausible one is detected again (with a
    warning), never handed to LLVM.
    """
    ident = digest(" ".join(sorted(cpu_flags())) + tvm_version(), 16)
    path = graphllm_home() / "targets" / f"{ident}.checked.json"  # not <ident>.json: older graphllms read that
    try:
        return _checked_target(read_checked_json(path.read_text())["target"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"the remembered target {path} is damaged ({e}); detecting this CPU again")
    from ..codegen.target import detect_target

    target = detect_target()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checked_json(path, {"target": target})
    return target


def _checked_target(target: Any) -> dict[str, Any]:
    """``target`` if it has the form detect_target writes (an LLVM target naming its triple and CPU), else ValueError."""
    if not (isinstance(target, dict) and target.get("kind") == "llvm"
            and all(isinstance(target.get(k), str) and target[k].strip() for k in ("mtriple", "mcpu"))):
        raise ValueError(f"not an LLVM target: {json.dumps(target)[:80]}")
    return target


def device_target(device: str = "cpu", cuda_archs: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The TVM target of a --device: this host's CPU, or CUDA compiled ahead of time for `cuda_archs`."""
    if device == "cpu":
        return host_target()
    from ..codegen.target import DEFAULT_CUDA_ARCHS, cuda_target

    return cuda_target(cuda_archs or DEFAULT_CUDA_ARCHS)


def build_dir(graph: Graph, target: dict[str, Any] | None = None, knobs: Mapping[str, Any] | None = None) -> Path:
    """Where the build of a graph for a target (with these knob values) lives in the cache."""
    return graphllm_home() / "builds" / cache_key(graph, target or host_target(), knobs=knobs)


def packed_dir(build: Path, model: Path | None) -> Path | None:
    """Where a build keeps the packed weights of one model file or folder (by path, size and mtime)."""
    if model is None or not model.exists():
        return None
    paths = [model] if model.is_file() else sorted(model.glob("*.safetensors"))
    ident = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    return build / "packed" / digest(ident, 20)


def model_path(weights: Mapping[str, np.ndarray]) -> Path | None:
    """The model file or folder a weight source reads (None for weights not read from a model)."""
    model = getattr(weights, "model", None)
    return None if model is None else Path(model.path)


def open_build(graph: Graph, weights: Mapping[str, np.ndarray], *, artifact: str | os.PathLike | None,
               max_context: int, num_slots: int, threads: int | None, notes: list[str],
               show_progress: bool = False, max_seqs: int | None = None, device: str = "cpu",
               cuda_archs: tuple[str, ...] | None = None, tuned: TuningChoice = True) -> CompiledExecutor:
    """A CompiledExecutor (CudaExecutor for a cuda device) from an explicit artifact, else from the cache, built
    with the ``tuned`` database's knobs for this target (see the module doc)."""
    kwargs: dict[str, Any] = dict(max_context=max_context, num_slots=num_slots, threads=threads, max_seqs=max_seqs)
    executor_class: Callable[..., CompiledExecutor] = CompiledExecutor
    if device != "cpu":
        from .cuda import CudaExecutor, parse_device

        executor_class, kwargs["device"] = CudaExecutor, parse_device(device)[1]
    make = functools.partial(executor_class, weights=weights, **kwargs)
    if artifact is not None:
        check_artifact(artifact, graph)
        return make(artifact, pack_cache=packed_dir(Path(artifact), model_path(weights)))
    target = device_target(device, cuda_archs)
    from ..codegen.tuning import tuned_knobs  # the knobs' declarations (no TVM import)

    chosen = tuned_knobs(graph, target, threads, tuned)
    notes.extend([chosen.note] if chosen.note else [])
    folder = build_dir(graph, target, chosen.knobs)
    make = functools.partial(make, folder, pack_cache=packed_dir(folder, model_path(weights)))
    return _cached(graph, folder, target, chosen.knobs, functools.partial(_load_entry, make, folder), show_progress,
                   fresh=make)


def compiled_build(graph: Graph, *, threads: int | None, notes: list[str], show_progress: bool = False,
                   device: str = "cpu", cuda_archs: tuple[str, ...] | None = None, tuned: TuningChoice = True) -> Path:
    """The build cache's folder for ``graph`` (what open_build would load), compiled now if missing or damaged:
    an artifact other processes (serving replicas) load without compiling."""
    target = device_target(device, cuda_archs)
    from ..codegen.tuning import tuned_knobs

    chosen = tuned_knobs(graph, target, threads, tuned)
    notes.extend([chosen.note] if chosen.note else [])
    folder = build_dir(graph, target, chosen.knobs)
    _cached(graph, folder, target, chosen.knobs, functools.partial(read_build, folder), show_progress)
    return folder


def _cached(graph: Graph, folder: Path, target: dict[str, Any], knobs: Mapping[str, Any] | None,
            use: Callable[[], Any], show_progress: bool, fresh: Callable[[], Any] | None = None) -> Any:
    """``use()`` of a cache entry, compiling the entry first (under its lock) when it is missing or ``use`` fails;
    an entry compiled here is used by ``fresh`` when given (quietly: compiling said so already)."""
    if folder.exists():  # the usual start: a good entry, used without waiting for a lock
        with contextlib.suppress(Exception):  # looked at again under the lock: it may be being replaced
            return use()
    with file_lock(graphllm_home() / "locks" / f"build-{folder.name}.lock"):
        if folder.exists():  # another process may have built it while this one waited
            try:
                return use()
            except Exception as e:  # any failure to load an entry of the cache rebuilds it
                reason = e.reason if isinstance(e, DamagedBuild) else f"{type(e).__name__}: {e}"
                warnings.warn(f"the cached build {folder} is unusable ({reason}); rebuilding it")
        from ..codegen.compile import compile_graph

        compile_graph(graph, folder, target, show_progress=show_progress, kind=CACHE_ENTRY, knobs=knobs)
    return (fresh or use)()


def _load_entry(make: Callable[[], CompiledExecutor], folder: Path) -> CompiledExecutor:
    """The executor of a cache entry (its files checked first), logged as loaded (level INFO)."""
    executor = make()
    log.info("loaded the build from %s", folder)  # shown by -v/--verbose only: a cached start is quiet
    return executor


def check_artifact(artifact: str | os.PathLike, graph: Graph) -> None:
    """Nothing if the folder holds an intact build of ``graph``; else DamagedBuild or a ModelLoadError saying whose."""
    plan = read_build(artifact)
    if plan.graph_key != graph_key(graph):
        raise ModelLoadError(_another_model(Path(artifact), plan))


def _another_model(artifact: Path, plan: Plan) -> str:
    """The message for an artifact whose graph is not the one the model and flags give."""
    what = "compiled for another model or other --dtype/--kv-dtype/--custom/--passes flags"
    if plan.model is None:
        return f"the build in {artifact} was {what} (from a text IR); recompile it with `graphllm compile` for this model"
    return (f"the build in {artifact} was {what} (its model: {plan.model.path}); pass -m {plan.model.path} with the "
            f"flags given to `graphllm compile`, or recompile it with `graphllm compile` for this model")


def artifact_model(artifact: str | os.PathLike) -> Path:
    """The model an artifact was compiled for, checked to be there and unchanged; else a ModelLoadError naming it."""
    ref = Plan.load(artifact).model
    if ref is None:
        raise ModelLoadError(f"the build in {artifact} was compiled from a text IR without a model: "
                             f"pass the model with -m")
    path = Path(ref.path)
    if not path.exists():
        raise ModelLoadError(f"the build in {artifact} was compiled for {path}, which is not there any more: "
                             f"pass the model with -m, or recompile it with `graphllm compile`")
    if ModelRef.of(path) != ref:
        raise ModelLoadError(f"the build in {artifact} was compiled for {path}, which has changed since: "
                             f"pass the model with -m, or recompile it with `graphllm compile`")
    return path
