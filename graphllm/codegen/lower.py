"""Lowering: a graph node (op, attrs, input/output types) -> a scheduled TVM PrimFunc.

Each op's lowering lives in ``graphllm/codegen/kernels/cpu/<family>.py`` and registers itself here
with ``@lowering("OpName")``. Nodes that are views of their input (ExpandHead, DataTypeAs to the
same dtype) get no kernel; host ops (Print, Exit) run in Python.

A kernel's parameters are bound by name: an input port of the op, ``out`` (the node's value), or
one of the step extras the executor provides:
- ``positions`` int32[T]: the position of every token (positionIds),
- ``slots`` int32[T]: the KV-cache slot of every token's sequence,
- ``last_rows`` int32[B]: the row of each sequence's last token (from seqLens),
- ``kcache`` / ``vcache`` float32[S, C, Hk, D]: the layer's KV cache (FusedAttention),
- ``threads`` int32[1]: the executor's kernel thread count (how far attention splits its keys).
Symbolic dims ``T`` and ``B`` are int64 vars shared by every buffer of one PrimFunc.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..dsl.types import TensorType

VIEW_OPS = frozenset({"ExpandHead"})
RUNTIME_ATTRS = frozenset({"layer"})  # attrs that only pick runtime state (which KV cache), not code
HOST_OPS = frozenset({"Print", "Exit"})
EXTRAS = ("positions", "slots", "last_rows", "kcache", "vcache", "threads")


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
    """

    func: Any
    params: tuple[str, ...]
    large: Any = None
    large_from: int = 0
    packs: dict[str, str] = field(default_factory=dict)
    before: tuple["Kernel", ...] = ()
    inplace: str | None = None

    def variants(self) -> dict[str, Any]:
        """Suffix -> PrimFunc for every variant to build."""
        return {"": self.func, **({"_large": self.large} if self.large is not None else {})}


Lowering = Callable[[LowerRequest], Kernel]
LOWERINGS: dict[str, Lowering] = {}
PACKERS: dict[str, Callable[[Any], Any]] = {}


def packer(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a weight re-layout applied once at load (named in Kernel.packs, saved in the plan).

    A plan may name ``name:ARG`` (e.g. ``qlinear:q4_1``): the packer is then called as fn(w, ARG).
    """
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        PACKERS[name] = fn
        return fn
    return deco


def get_packer(name: str) -> Callable[[Any], Any]:
    """The re-layout a plan names, its argument (after ':') bound."""
    base, _, arg = name.partition(":")
    fn = PACKERS[base]
    return (lambda w: fn(w, arg)) if arg else fn


def lowering(op: str) -> Callable[[Lowering], Lowering]:
    """Register the lowering of one op."""
    def deco(fn: Lowering) -> Lowering:
        if op in LOWERINGS:
            raise ValueError(f"lowering for {op} registered twice")
        LOWERINGS[op] = fn
        return fn
    return deco


def is_view(op: str, req: LowerRequest) -> bool:
    """Nodes whose value is their input's buffer reinterpreted (no kernel, no copy)."""
    if op in VIEW_OPS:
        return True
    return op == "DataTypeAs" and req.types["input"].dtype == req.output.dtype


def lower(req: LowerRequest) -> Kernel:
    """The kernel for one node; an op without a lowering is an error naming it."""
    load_kernel_modules()
    fn = LOWERINGS.get(req.op)
    if fn is None:
        raise NotImplementedError(f"no TVM lowering for op {req.op}")
    return fn(req)


def load_kernel_modules() -> None:
    import importlib
    import pkgutil

    from .kernels import cpu

    for info in pkgutil.iter_modules(cpu.__path__):
        importlib.import_module(f"{cpu.__name__}.{info.name}")


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
