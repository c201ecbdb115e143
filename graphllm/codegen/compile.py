"""Compile a verified graph into an artifact: one TVM shared library plus its typed plan (graphllm/plan.py).

The runtime replays the plan (graphllm/runtime/executor.py); it never needs the TVM compiler.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..dsl.graph import INPUT_OP, WEIGHT_OP, Graph
from ..dsl.inputs import OUTPUT
from ..dsl.ops import get_spec, kv_dtype
from ..dsl.serialize import graph_to_json
from ..errors import GraphLLMError
from ..io.cache import FileSum
from ..io.output import FolderKind, output_folder
from ..plan import (ARTIFACT, FATBIN_FILE, LIB_FILE, Arg, BufferValue, CompileInfo, ExtraArg, HostStep, InputValue,
                    KVCacheArg, ModelRef, PackedWeightValue, Plan, Step, Value, ValueArg, ViewValue, WeightValue,
                    graph_key)
from .lower import EXTRAS, HOST_OPS, KV_CACHE_PARAMS, RUNTIME_ATTRS, Kernel, LowerRequest, is_view, lower
from .target import SOURCE_DIGEST, target_kind



def request_of(graph: Graph, node: str) -> LowerRequest:
    """The lowering request of one node."""
    d = graph[node]
    inputs = tuple((port, graph[src]["type"]) for port, src in graph.inputs(node).items())
    attrs = tuple(sorted((k, v) for k, v in d["attrs"].items() if k not in RUNTIME_ATTRS))
    return LowerRequest(d["op"], attrs, inputs, d["type"])


def kernel_key(req: LowerRequest, knobs: Mapping[str, Any]) -> str:
    """The symbol prefix of a request's kernel: nodes share a kernel only with the same request and knob values."""
    if not knobs:
        return req.key()
    text = json.dumps(sorted(knobs.items()), default=str)
    return f"{req.key()}_k{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def kernel_requests(graph: Graph) -> dict[str, tuple[LowerRequest, int]]:
    """The graph's distinct kernel requests, by request key, with how many nodes use each (plan order)."""
    out: dict[str, tuple[LowerRequest, int]] = {}
    for node in graph.order():
        op = graph[node]["op"]
        if op in (INPUT_OP, WEIGHT_OP) or op in HOST_OPS:
            continue
        req = request_of(graph, node)
        if not is_view(op, req):
            out[req.key()] = (req, out[req.key()][1] + 1 if req.key() in out else 1)
    return out


def make_plan(graph: Graph, target: dict[str, Any], progress: Callable[[str], None] | None = None,
              knobs: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Plan, dict[str, Any]]:
    """Lower every node (with `knobs` {request key: knob values} over the defaults, e.g. tuned ones): returns
    the typed plan and {symbol: PrimFunc} of the distinct kernels."""
    values: dict[str, Value] = {}
    steps: list[Step | HostStep] = []
    funcs: dict[str, Any] = {}
    kernels: dict[str, Kernel] = {}
    kind = target_kind(target)
    for node in graph.order():
        d = graph[node]
        if d["op"] == INPUT_OP:
            values[node] = InputValue(d["attrs"]["name"], d["type"])
            continue
        if d["op"] == WEIGHT_OP:
            values[node] = WeightValue(d["attrs"]["name"], d["type"])
            continue
        ports = graph.inputs(node)
        if d["op"] in HOST_OPS:
            steps.append(HostStep(node, d["op"], ports, str(d["loc"])))
            continue
        req = request_of(graph, node)
        if is_view(d["op"], req):
            values[node] = ViewValue(ports["input"], d["type"])
            continue
        values[node] = BufferValue(d["type"])
        chosen = (knobs or {}).get(req.key(), {})
        key = kernel_key(req, chosen)
        if key not in kernels:
            if progress:
                progress(key)
            try:
                kernels[key] = lower(req, kind, chosen)
            except NotImplementedError as e:
                raise GraphLLMError(f"{graph.where(node)}: no TVM kernel yet: {e} (run with --executor reference, "
                                    f"or --dtype float32 for quantized weights)") from None
            for i, kernel in enumerate(_stages(kernels[key])):
                for suffix, func in kernel.variants().items():
                    funcs[f"{key}_{i}{suffix}"] = func
        spec = get_spec(d["op"])
        kv_shape = spec.kv_shape(dict(req.inputs), d["attrs"]) if spec.kv_shape else None
        for i, kernel in enumerate(_stages(kernels[key])):
            args = _bind_args(kernel, node, ports, values)
            steps.append(Step(node, d["op"], f"{key}_{i}", args,
                              large=f"{key}_{i}_large" if kernel.large is not None else None,
                              large_from=kernel.large_from, layer=d["attrs"]["layer"] if kv_shape else None,
                              kv_shape=tuple(kv_shape) if kv_shape else None,
                              kv_dtype=kv_dtype(d["attrs"]) if kv_shape else None,
                              inplace=_inplace_value(kernel, ports, args), knobs=dict(kernel.knobs)))
    plan = Plan(target=target, graph_key=graph_key(graph), config=graph.config, values=values, steps=tuple(steps),
                output=graph.outputs[OUTPUT], graph=graph_to_json(graph))
    return plan, funcs


def _inplace_value(kernel: Kernel, ports: dict[str, str], args: tuple[Arg, ...]) -> str | None:
    """The input value the output may overwrite: the kernel's inplace port, unless that value is also bound elsewhere."""
    if kernel.inplace is None:
        return None
    value = ports[kernel.inplace]
    return value if args.count(ValueArg(value)) == 1 else None


def _stages(kernel: Kernel) -> list[Kernel]:
    """The kernels one node runs, in order."""
    return [*kernel.before, kernel]


def _bind_args(kernel: Kernel, node: str, ports: dict[str, str], values: dict[str, Value]) -> tuple[Arg, ...]:
    """What each kernel parameter is bound to (packed weights become values of their own)."""
    args: list[Arg] = []
    for p in kernel.params:
        if p == "out":
            args.append(ValueArg(node))
        elif p in KV_CACHE_PARAMS:
            args.append(KVCacheArg(KV_CACHE_PARAMS[p]))
        elif p in EXTRAS:
            args.append(ExtraArg(p))
        elif p in kernel.packs:
            packed = f"{ports[p]}|{kernel.packs[p]}"
            values[packed] = PackedWeightValue(ports[p], kernel.packs[p], values[ports[p]].type)
            args.append(ValueArg(packed))
        else:
            args.append(ValueArg(ports[p]))
    return tuple(args)


def compile_graph(graph: Graph, out_dir: str | os.PathLike, target: dict[str, Any] | None = None,
                  show_progress: bool = True, force: bool = False, model: ModelRef | None = None,
                  kind: FolderKind = ARTIFACT, knobs: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Build the graph's kernels (``knobs`` as make_plan's) with TVM and publish the library + plan as out_dir.

    The plan records the library's size and sha256 and the ``model`` compiled for (None: none). An earlier
    artifact there is replaced whole; a folder of the user's is refused, or with ``force`` gets the artifact's
    files beside its own (graphllm/io/output.py): nothing of the user's is lost. A ``kind`` that is
    graphllm's own whole (a cache entry) is replaced whatever it holds.
    """
    from .build import build_fatbin, build_module, export_module
    from .target import detect_target

    target = dict(target or detect_target())
    start = time.perf_counter()
    bar = _progress(show_progress)
    total = len({kernel_key(req, (knobs or {}).get(key, {})) for key, (req, _) in kernel_requests(graph).items()})
    count = iter(range(1, total + 1))
    plan, funcs = make_plan(graph, target, progress=lambda key: bar(f"lowering kernel {next(count)} of {total} ({key})"),
                            knobs=knobs)
    bar(f"building {len(funcs)} kernels for {target.get('mcpu', target.get('arch', target['kind']))}")
    try:
        executable = build_module(funcs, target)
    except Exception as e:  # TVM raises its own error types; the user needs the op, not TVM's stack
        raise GraphLLMError(f"TVM failed to build the kernels: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    fatbin = None
    if target_kind(target) == "cuda":
        bar("compiling the CUDA kernels with nvcc")
        fatbin, plan.target[SOURCE_DIGEST] = build_fatbin(executable, target)
    out = Path(out_dir)
    with output_folder(out, kind, force=force) as tmp:
        library = export_module(executable, tmp / LIB_FILE)
        if fatbin is not None:
            (tmp / FATBIN_FILE).write_bytes(fatbin)
        seconds = round(time.perf_counter() - start, 2)
        replace(plan, compile=CompileInfo(seconds, len(funcs)), library=FileSum.of(library), model=model).save(tmp)
    bar(f"compiled {len(funcs)} kernels in {seconds} s -> {out}", done=True)
    return out


def _progress(enabled: bool) -> Callable[..., None]:
    """A one-line progress display on stderr (tqdm), or a no-op."""
    if not enabled:
        return lambda text, done=False: print(text, file=sys.stderr) if done else None
    from tqdm import tqdm

    bar = tqdm(total=None, desc="lowering", bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False)

    def update(text: str, done: bool = False) -> None:
        bar.set_description_str(text)  # drawn now: the step after it (TVM's build) may be long
        if done:
            bar.close()
            print(text, file=sys.stderr)
    return update
