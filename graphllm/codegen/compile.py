"""Compile a verified graph into an artifact: one TVM shared library plus a plan file.

The plan lists every value (its type and whether it is an input, a weight, a buffer or a view),
every step (the kernel to call and the values bound to its parameters) and the output. The
runtime replays it (graphllm/runtime/executor.py); it never needs the TVM compiler.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..dsl.graph import INPUT_OP, WEIGHT_OP, Graph
from ..dsl.inputs import OUTPUT
from ..dsl.ops import get_spec
from ..dsl.serialize import graph_to_json
from ..errors import GraphLLMError
from ..host import tvm_version
from .lower import EXTRAS, HOST_OPS, RUNTIME_ATTRS, Kernel, LowerRequest, is_view, lower

PLAN_FILE = "plan.json"
LIB_FILE = "kernels.so"
PLAN_VERSION = 4  # 2: attention steps carry kv_shape; 3: steps carry inplace; 4: the threads extra


def graph_key(graph: Graph) -> str:
    """Identity of a graph's computation (source locations excluded)."""
    text = json.dumps(graph_to_json(graph, with_locs=False), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def codegen_hash() -> str:
    """Hash of the code generator's own sources, so that a changed kernel never reuses an old build."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cache_key(graph: Graph, target: dict[str, Any], dtype: str = "float32") -> str:
    """What a build depends on: graph text, target, dtype, graphllm, TVM and code generator versions."""
    text = json.dumps([graph_key(graph), target, dtype, __version__, tvm_version(), PLAN_VERSION, codegen_hash()],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def request_of(graph: Graph, node: str) -> LowerRequest:
    """The lowering request of one node."""
    d = graph[node]
    inputs = tuple((port, graph[src]["type"]) for port, src in graph.inputs(node).items())
    attrs = tuple(sorted((k, v) for k, v in d["attrs"].items() if k not in RUNTIME_ATTRS))
    return LowerRequest(d["op"], attrs, inputs, d["type"])


def make_plan(graph: Graph, progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Lower every node: returns the plan (JSON-able) and {symbol: PrimFunc} of the distinct kernels."""
    values: dict[str, dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []
    funcs: dict[str, Any] = {}
    kernels: dict[str, Any] = {}
    for node in graph.order():
        d = graph[node]
        if d["op"] == INPUT_OP:
            values[node] = {"kind": "input", "name": d["attrs"]["name"], "type": str(d["type"])}
            continue
        if d["op"] == WEIGHT_OP:
            values[node] = {"kind": "weight", "name": d["attrs"]["name"], "type": str(d["type"])}
            continue
        ports = graph.inputs(node)
        if d["op"] in HOST_OPS:
            steps.append({"node": node, "host": d["op"], "args": ports, "loc": str(d["loc"])})
            continue
        req = request_of(graph, node)
        if is_view(d["op"], req):
            values[node] = {"kind": "view", "of": ports["input"], "type": str(d["type"])}
            continue
        values[node] = {"kind": "buffer", "type": str(d["type"])}
        key = req.key()
        if key not in kernels:
            if progress:
                progress(key)
            try:
                kernels[key] = lower(req)
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
            steps.append({"node": node, "kernel": f"{key}_{i}",
                          "large": f"{key}_{i}_large" if kernel.large is not None else None,
                          "large_from": kernel.large_from, "args": args,
                          "layer": d["attrs"]["layer"] if kv_shape else None, "kv_shape": kv_shape,
                          "inplace": _inplace_value(kernel, ports, args)})
    plan = {"version": PLAN_VERSION, "graphllm": __version__, "tvm": tvm_version(), "dtype": "float32",
            "graph_key": graph_key(graph), "config": graph.config, "values": values, "steps": steps, "output": graph.outputs[OUTPUT],
            "graph": graph_to_json(graph)}
    return plan, funcs


def _inplace_value(kernel: Kernel, ports: dict[str, str], args: list[str]) -> str | None:
    """The input value the output may overwrite: the kernel's inplace port, unless that value is also bound elsewhere."""
    if kernel.inplace is None:
        return None
    value = ports[kernel.inplace]
    return value if args.count(value) == 1 else None


def _stages(kernel: Kernel) -> list[Kernel]:
    """The kernels one node runs, in order."""
    return [*kernel.before, kernel]


def _bind_args(kernel: Kernel, node: str, ports: dict[str, str], values: dict[str, dict[str, Any]]) -> list[str]:
    """Plan value ids for each kernel parameter (packed weights become values of their own)."""
    args = []
    for p in kernel.params:
        if p == "out":
            args.append(node)
        elif p in EXTRAS:
            args.append(f"extra:{p}")
        else:
            src = ports[p]
            pack = kernel.packs.get(p)
            if pack:
                packed = f"{src}|{pack}"
                values[packed] = {**values[src], "pack": pack}
                src = packed
            args.append(src)
    return args


def compile_graph(graph: Graph, out_dir: str | os.PathLike, target: dict[str, Any] | None = None,
                  show_progress: bool = True) -> Path:
    """Build the graph's kernels with TVM and write ``kernels.so`` + ``plan.json`` into out_dir atomically."""
    from .build import build_module, export_module
    from .target import detect_target

    target = dict(target or detect_target())
    start = time.perf_counter()
    bar = _progress(show_progress)
    plan, funcs = make_plan(graph, progress=lambda key: bar(f"lowering {key}"))
    bar(f"building {len(funcs)} kernels for {target.get('mcpu', target['kind'])}")
    try:
        executable = build_module(funcs, target)
    except Exception as e:  # TVM raises its own error types; the user needs the op, not TVM's stack
        raise GraphLLMError(f"TVM failed to build the kernels: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    export_module(executable, tmp / LIB_FILE)
    plan["target"] = target
    plan["compile_seconds"] = round(time.perf_counter() - start, 2)
    (tmp / PLAN_FILE).write_text(json.dumps(plan, indent=1, default=str))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    bar(f"compiled {len(funcs)} kernels in {plan['compile_seconds']} s -> {out}", done=True)
    return out


def _progress(enabled: bool) -> Callable[..., None]:
    """A one-line progress display on stderr (tqdm), or a no-op."""
    if not enabled:
        return lambda text, done=False: print(text, file=sys.stderr) if done else None
    from tqdm import tqdm

    bar = tqdm(total=None, bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False)

    def update(text: str, done: bool = False) -> None:
        bar.set_description_str(text)
        bar.refresh()
        if done:
            bar.close()
            print(text, file=sys.stderr)
    return update
