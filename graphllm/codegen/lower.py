"""Lowering: a graph node (op, attrs, input/output types) -> a scheduled TVM PrimFunc for one target kind.

Each op's lowering for a target lives in ``graphllm/codegen/kernels/<target>/<family>.py`` and registers
itself here with ``@lowering("OpName", target="cpu", knobs=...)``, declaring the knobs of its kernel
template (`knobs.Knob`). `lower(req, target, knobs)` validates the knob values (defaults unless given)
and returns them on the Kernel; `knobs_of(req, target)` says which knobs the kernel for a request has.
Nodes that are views of their input (ExpandHead, DataTypeAs to the same dtype) get no kernel; host ops
(Print, Exit) run in Python.

A kernel's parameters are bound by name: an input port of the op, ``out`` (the node's value), or
one of the step extras the executor provides:
- ``positions`` int32[T]: the position of every token (positionIds),
- ``slots`` int32[T]: the KV-cache slot of every token's sequence,
- ``last_rows`` int32[B]: the row of each sequence's last token (from seqLens),
- ``kcache`` / ``vcache`` [S, C, Hk, D] of the node's kvDtype (float32 or float16): the layer's KV cache,
- ``threads`` int32[1]: the executor's kernel thread count (how far attention splits its keys).
Symbolic dims ``T`` and ``B`` are int64 vars shared by every buffer of one PrimFunc.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..dsl.ops import get_spec
from ..dsl.types import TensorType
from ..plan import STEP_EXTRAS
from .knobs import Knob, resolve

VIEW_OPS = frozenset({"ExpandHead"})
RUNTIME_ATTRS = frozenset({"layer"})  # attrs that only pick runtime state (which KV cache), not code
HOST_OPS = frozenset({"Print", "Exit"})
KV_CACHE_PARAMS: dict[str, Literal["key", "value"]] = {"kcache": "key", "vcache": "value"}
EXTRAS = (*STEP_EXTRAS, *KV_CACHE_PARAMS)  # kernel parameters the executor binds (see the module doc)


@dataclass(frozen=True)
class LowerRequest:
    """What a lowering sees of one node."""

    op: str
    attrs: tuple[tuple[str, Any], ...]
    inputs: tuple[tuple[str, TensorType], ...]
    output: TensorType | None

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)

    @property
    def types(self) -> dict[str, TensorType]:
        return dict(self.inputs)

    def key(self) -> str:
        """A stable identity: equal requests share one kernel in a module."""
        text = json.dumps([self.op, [list(a) for a in self.attrs],
                           [[p, str(t)] for p, t in self.inputs], str(self.output)], sort_keys=True)
        return f"{self.op.lower()}_{hashlib.sha1(text.encode()).hexdigest()[:12]}"


@dataclass
class Kernel:
    """A lowered node: one PrimFunc (or a small-T and a large-T variant) and how to bind its params.

    ``before`` lists kernels the node runs first (e.g. FusedAttention's KV-cache write).
    ``inplace`` names an input port whose buffer the output may take over (each element read by
    the thread that then writes it), when the input dies here and is bound to no other parameter.
    ``knobs`` holds the value of every knob of the kernel's template it was lowered with.
    """

    func: Any
    params: tuple[str, ...]
    large: Any = None
    large_from: int = 0
    packs: dict[str, str] = field(default_factory=dict)
    before: tuple["Kernel", ...] = ()
    inplace: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)

    def variants(self) -> dict[str, Any]:
        """Suffix -> PrimFunc for every variant to build."""
        return {"": self.func, **({"_large": self.large} if self.large is not None else {})}


LowerFn = Callable[[LowerRequest, Mapping[str, Any]], Kernel]  # (request, knob values) -> Kernel
KnobsOf = Callable[[LowerRequest], Sequence[Knob]]  # a template's knobs for one request


@dataclass(frozen=True)
class Lowering:
    """One registered lowering: the op and target kind it serves, its kernel template's knobs, the function.

    ``knobs`` is a tuple, or a function of the request when the template depends on it (a Linear's
    weight format picks the float or the block-quantized kernels).
    """

    op: str
    target: str
    knobs: Sequence[Knob] | KnobsOf
    fn: LowerFn

    def knobs_for(self, req: LowerRequest) -> tuple[Knob, ...]:
        """The knobs of the kernel this lowering builds for `req`."""
        return tuple(self.knobs(req) if callable(self.knobs) else self.knobs)


LOWERINGS: dict[tuple[str, str], Lowering] = {}


def lowering(op: str, target: str = "cpu", knobs: Sequence[Knob] | KnobsOf = ()) -> Callable[[LowerFn], LowerFn]:
    """Register fn(req, knob values) -> Kernel as the lowering of `op` for `target`, its template's `knobs` declared."""
    def deco(fn: LowerFn) -> LowerFn:
        if (op, target) in LOWERINGS:
            raise ValueError(f"lowering for {op} on {target} registered twice")
        LOWERINGS[op, target] = Lowering(op, target, knobs, fn)
        return fn
    return deco


def is_view(op: str, req: LowerRequest) -> bool:
    """Nodes whose value is their input's buffer reinterpreted (no kernel, no copy)."""
    if op in VIEW_OPS:
        return True
    return op == "DataTypeAs" and req.types["input"].dtype == req.output.dtype


def find_lowering(op: str, target: str = "cpu") -> Lowering:
    """The registered lowering of `op` for `target`; NotImplementedError naming both when there is none."""
    if _kernel_package(target):
        load_kernel_modules(target)
    found = LOWERINGS.get((op, target))
    if found is None:
        raise NotImplementedError(f"no TVM lowering for op {op} on target {target}")
    return found


def knobs_of(req: LowerRequest, target: str = "cpu") -> tuple[Knob, ...]:
    """The knobs of the kernel that `lower(req, target)` builds (what a tuner may set)."""
    return find_lowering(req.op, target).knobs_for(req)


def lower(req: LowerRequest, target: str = "cpu", knobs: Mapping[str, Any] | None = None) -> Kernel:
    """The kernel for one node on `target`, with `knobs` over its template's defaults (validated: KnobError)."""
    found = find_lowering(req.op, target)
    values = resolve(found.knobs_for(req), knobs or {}, f"the {target} kernel of {req.op}")
    return replace(found.fn(req, values), knobs=values)


def load_kernel_modules(target: str = "cpu") -> None:
    """Import every kernel module of `target` (graphllm/codegen/kernels/<target>/), registering its lowerings."""
    package = _kernel_package(target)
    if package is None:
        raise NotImplementedError(f"no kernels for target {target} (graphllm/codegen/kernels/{target}/)")
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")


def _kernel_package(target: str) -> str | None:
    """The package holding `target`'s kernel modules, None when there is none."""
    package = f"{__package__}.kernels.{target}"
    return package if target.isidentifier() and importlib.util.find_spec(package) is not None else None


def attrs_of(req: LowerRequest) -> dict[str, Any]:
    """Return the node's attributes with the op spec's defaults filled in (nodes may omit them)."""
    spec = get_spec(req.op)
    defaults = {p.name: p.default for p in spec.attr_params if p.default is not None}
    return {**defaults, **req.attr}


def require_float32(req: LowerRequest, *ports: str) -> None:
    """Raise NotImplementedError unless the named ports (and the output) are float32."""
    types = {p: req.types[p] for p in ports if p in req.types}
    if req.output is not None:
        types["output"] = req.output
    bad = {p: t.dtype for p, t in types.items() if t.dtype != "float32"}
    if bad:
        raise NotImplementedError(f"{req.op}: only float32 is lowered so far, got {bad}")


class Symbols:
    """The symbolic dims of one PrimFunc: every buffer that says T (or B) shares one var."""

    def __init__(self) -> None:
        self.vars: dict[str, Any] = {}

    def shape(self, t: TensorType) -> tuple[Any, ...]:
        from tvm import te

        out = []
        for d in t.shape:
            if isinstance(d, str):
                if d not in self.vars:
                    self.vars[d] = te.var(d, "int64")
                out.append(self.vars[d])
            else:
                out.append(d)
        return tuple(out)

    def placeholder(self, t: TensorType, name: str) -> Any:
        from tvm import te

        return te.placeholder(self.shape(t), t.dtype, name=name)
