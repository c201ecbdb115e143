"""The typed, versioned build plan: what the code generator writes and the runtime replays.

A plan lists every value (an input, a weight, a weight re-laid out for a kernel, an activation
buffer or a view of one), every step (a kernel symbol and what is bound to each of its
parameters, or a host op run in Python) and the output value, with the size and digest of the
kernel library beside it and the model it was compiled for. It is written and read only here
(``Plan.save`` / ``Plan.load`` / ``read_build``, JSON led by the checksum of its own body); a plan of
another format version, a damaged plan or a library that is not the one compiled is refused on load
(``DamagedBuild``), before the library is opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from . import __version__
from .dsl.ops import kv_caches_dtype, kv_position_bytes
from .dsl.types import SEQS, TOKENS, TensorType
from .errors import ModelLoadError
from .host import tvm_version
from .io.cache import FileSum, checked_json_text, digest, read_checked_json
from .io.output import FolderKind

if TYPE_CHECKING:
    from .dsl.graph import Graph

PLAN_VERSION = 8  # 5: typed plan (packed weights, argument kinds, knobs and op per step); 6: checksums, model;
# 7: kv_dtype per KV-cache step; 8: XXH3-128 checksums, the step driver in the kernel library
PLAN_FILE = "plan.json"
LIB_FILE = "kernels.so"
FATBIN_FILE = "kernels.fatbin"  # a CUDA build's kernels compiled by nvcc (codegen/build.py)
PACKED_DIR = "packed"  # packed weights kept beside a build, per model file (runtime/builds.py)
ARTIFACT = FolderKind("artifact", frozenset({PLAN_FILE, LIB_FILE, FATBIN_FILE, PACKED_DIR}), PLAN_FILE)
STEP_EXTRAS = ("positions", "slots", "last_rows", "threads")  # step inputs the executor fills (codegen/lower.py)
KV_HALVES = ("key", "value")


def graph_key(graph: Graph) -> str:
    """Identity of a graph's computation (source locations excluded): a plan is for one graph."""
    from .dsl.serialize import graph_to_json  # the graph (networkx) only where one is keyed: never on a warm start

    text = json.dumps(graph_to_json(graph, with_locs=False), sort_keys=True, default=str)
    return digest(text, 24)


class DamagedBuild(ModelLoadError):
    """A build folder (an artifact or a cache entry) that cannot be used as it is; ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}; recompile it with `graphllm compile`")


@dataclass(frozen=True)
class ModelRef:
    """The model a build was compiled for: its path, and the size and digest of its weights
    (the GGUF file, or the safetensors files of an HF folder in name order)."""

    path: str
    size: int
    digest: str

    @staticmethod
    def of(path: str | os.PathLike) -> ModelRef:
        """The reference of the model at ``path`` (a .gguf file or an HF folder), hashed now."""
        path = Path(path).absolute()
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        total = FileSum.of(*files)
        return ModelRef(str(path), total.size, total.digest)


@dataclass(frozen=True)
class InputValue:
    """A reserved graph input (inputIds, positionIds, seqLens, sin, cos, ...), filled by the executor."""

    name: str
    type: TensorType


@dataclass(frozen=True)
class WeightValue:
    """A model weight, read from the model file by name."""

    name: str
    type: TensorType


@dataclass(frozen=True)
class PackedWeightValue:
    """The weight value ``source`` re-laid out once at load by the packer named ``layout``."""

    source: str
    layout: str
    type: TensorType


@dataclass(frozen=True)
class BufferValue:
    """An activation written by a step, in storage planned by the runtime."""

    type: TensorType


@dataclass(frozen=True)
class ViewValue:
    """The value ``of`` reinterpreted with another shape (no kernel, no copy)."""

    of: str
    type: TensorType


Value = Union[InputValue, WeightValue, PackedWeightValue, BufferValue, ViewValue]
_VALUE_KINDS: dict[str, type] = {"input": InputValue, "weight": WeightValue, "packed": PackedWeightValue,
                                 "buffer": BufferValue, "view": ViewValue}
_KIND_OF_VALUE = {cls: kind for kind, cls in _VALUE_KINDS.items()}


@dataclass(frozen=True)
class ValueArg:
    """A kernel parameter bound to a plan value."""

    value: str


@dataclass(frozen=True)
class ExtraArg:
    """A kernel parameter bound to a step input the executor fills (one of STEP_EXTRAS)."""

    name: str

    def __post_init__(self) -> None:
        _check_one_of(self.name, STEP_EXTRAS, "step extra")


@dataclass(frozen=True)
class KVCacheArg:
    """A kernel parameter bound to the key or value cache of the step's layer."""

    half: Literal["key", "value"]

    def __post_init__(self) -> None:
        _check_one_of(self.half, KV_HALVES, "KV-cache half")


Arg = Union[ValueArg, ExtraArg, KVCacheArg]


@dataclass(frozen=True)
class Step:
    """One kernel call: its symbol (and large-T variant), the bound arguments and what it needs at runtime."""

    node: str
    op: str
    kernel: str
    args: tuple[Arg, ...]
    large: str | None = None
    large_from: int = 0
    layer: int | None = None
    kv_shape: tuple[int, ...] | None = None
    kv_dtype: str | None = None  # the element type of the layer's KV cache (with kv_shape)
    inplace: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)

    def symbol(self, rows: int) -> str:
        """The kernel to call when the step's output has `rows` rows (large_from counts output rows)."""
        return self.large if self.large is not None and rows >= self.large_from else self.kernel

    def value_ids(self) -> tuple[str, ...]:
        """The plan values bound to the kernel (inputs and output)."""
        return tuple(a.value for a in self.args if isinstance(a, ValueArg))


@dataclass(frozen=True)
class HostStep:
    """An op run in Python by its reference implementation (Print, Exit), with its input values by port."""

    node: str
    op: str
    args: dict[str, str]
    loc: str = ""

    def value_ids(self) -> tuple[str, ...]:
        """The plan values the op reads."""
        return tuple(self.args.values())


@dataclass(frozen=True)
class CompileInfo:
    """How the build was made."""

    seconds: float = 0.0
    kernels: int = 0


@dataclass
class Plan:
    """A compiled graph: values, steps and output, with the versions and target it was built for."""

    target: dict[str, Any]
    graph_key: str
    config: dict[str, Any]
    values: dict[str, Value]
    steps: tuple[Step | HostStep, ...]
    output: str
    graph: dict[str, Any]
    compile: CompileInfo = field(default_factory=CompileInfo)
    library: FileSum | None = None  # LIB_FILE as written beside the plan (None: not compiled yet)
    model: ModelRef | None = None  # None: compiled from text IR without a model
    graphllm: str = __version__
    tvm: str = field(default_factory=tvm_version)
    version: int = PLAN_VERSION

    @property
    def kernel_steps(self) -> tuple[Step, ...]:
        """The steps that call a kernel."""
        return tuple(s for s in self.steps if isinstance(s, Step))

    def kernel_symbol(self, step: Step, tokens: int, seqs: int) -> str:
        """The kernel a step calls in a step of `tokens` tokens over `seqs` sequences: chosen by its output's rows,
        so a step on one row per sequence (the lm_head after the last-row gather) keeps its GEMV in a prefill."""
        shape = self.values[step.node].type.concrete({TOKENS: tokens, SEQS: seqs})
        return step.symbol(shape[0] if shape else 1)

    @property
    def kv_dtype(self) -> str | None:
        """The KV caches' element type (None without caches; mixed types joined by '+')."""
        return kv_caches_dtype(dtype for _, dtype in self._kv_caches())

    def kv_bytes_per_position(self) -> int:
        """Bytes of KV cache one token position takes in one slot, over all layers (keys and values)."""
        return kv_position_bytes(self._kv_caches())

    def _kv_caches(self) -> list[tuple[tuple[int, ...], str]]:
        """(kv_shape, dtype) of each layer's KV cache (a layer's cache may be bound by several steps)."""
        return list({s.layer: (s.kv_shape, s.kv_dtype) for s in self.kernel_steps if s.kv_shape and s.kv_dtype}.values())

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-able data."""
        return {"version": self.version, "graphllm": self.graphllm, "tvm": self.tvm, "target": self.target,
                "graph_key": self.graph_key, "config": self.config,
                "values": {v: _value_to_json(value) for v, value in self.values.items()},
                "steps": [_step_to_json(s) for s in self.steps], "output": self.output, "graph": self.graph,
                "compile": {"seconds": self.compile.seconds, "kernels": self.compile.kernels},
                "library": self.library.to_json() if self.library else None,
                "model": asdict(self.model) if self.model else None}

    @staticmethod
    def from_json(data: Any, source: str | os.PathLike = "plan") -> Plan:
        """The plan of JSON data; another format version or a malformed plan is a ModelLoadError naming `source`."""
        found = _version(data, Path(source))
        try:
            plan = Plan(target=dict(data["target"]), graph_key=str(data["graph_key"]), config=dict(data["config"]),
                        values={str(v): _value_from_json(d) for v, d in data["values"].items()},
                        steps=tuple(_step_from_json(d) for d in data["steps"]), output=str(data["output"]),
                        graph=dict(data["graph"]), compile=CompileInfo(**data["compile"]),
                        library=FileSum.from_json(data["library"]) if data["library"] is not None else None,
                        model=ModelRef(**data["model"]) if data["model"] is not None else None,
                        graphllm=str(data["graphllm"]), tvm=str(data["tvm"]), version=found)
            plan.check()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DamagedBuild(Path(source), f"malformed plan ({type(e).__name__}: {e})") from None
        return plan

    def check(self) -> None:
        """Raise ValueError on a dangling value id, a packed non-weight or a KV-cache argument without a layer."""
        named = [self.output, *(v for s in self.steps for v in s.value_ids())]
        named += [value.of for value in self.values.values() if isinstance(value, ViewValue)]
        missing = sorted({v for v in named if v not in self.values})
        if missing:
            raise ValueError(f"unknown value(s) {', '.join(missing)}")
        for v, value in self.values.items():
            if isinstance(value, PackedWeightValue) and not isinstance(self.values.get(value.source), WeightValue):
                raise ValueError(f"packed value {v} names {value.source}, which is not a weight")
        for step in self.kernel_steps:
            if any(isinstance(a, KVCacheArg) for a in step.args) and (step.layer is None or step.kv_shape is None
                                                                      or step.kv_dtype is None):
                raise ValueError(f"step {step.node} binds a KV cache but has no layer, kv_shape and kv_dtype")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the plan file (led by the checksum of its body) into an artifact folder."""
        path = Path(folder) / PLAN_FILE
        path.write_text(checked_json_text(self.to_json()))
        return path

    @staticmethod
    def load(folder: str | os.PathLike) -> Plan:
        """The plan of an artifact folder; a missing, damaged, malformed or other-version plan is DamagedBuild."""
        path = Path(folder) / PLAN_FILE
        try:
            text = path.read_text()
            data = json.loads(text)
        except (OSError, ValueError) as e:
            raise DamagedBuild(path, f"not a graphllm plan ({type(e).__name__}: {str(e)[:80]})") from None
        _version(data, path)  # first: an older graphllm's plan has no checksum, and deserves the clearer message
        try:
            read_checked_json(text)
        except ValueError as e:
            raise DamagedBuild(path, f"the plan is damaged: {e}") from None
        return Plan.from_json(data, path)


def read_build(folder: str | os.PathLike) -> Plan:
    """The plan of a build folder whose library is checked against the size and digest the plan recorded
    (before anything opens it); DamagedBuild names what does not match."""
    plan = Plan.load(folder)
    lib = Path(folder) / LIB_FILE
    if plan.library is None:
        raise DamagedBuild(Path(folder) / PLAN_FILE, "the plan records no kernel library")
    problem = plan.library.mismatch(lib)
    if problem is not None:
        raise DamagedBuild(Path(folder), problem)
    return plan


def _version(data: Any, path: Path) -> int:
    """The plan format of plan data: PLAN_VERSION, else DamagedBuild (not a plan, or another graphllm's)."""
    if not isinstance(data, dict) or "version" not in data:
        raise DamagedBuild(path, "not a graphllm plan (no format version)")
    if data["version"] != PLAN_VERSION:
        raise DamagedBuild(path, f"plan format {data['version']}, but this graphllm reads plan format {PLAN_VERSION} "
                                 f"(the build was written by another graphllm version)")
    return PLAN_VERSION


def _check_one_of(name: str, allowed: tuple[str, ...], what: str) -> None:
    """Raise ValueError unless `name` is one of `allowed`."""
    if name not in allowed:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(allowed)})")


def _value_to_json(value: Value) -> dict[str, Any]:
    return {"kind": _KIND_OF_VALUE[type(value)], **{f.name: getattr(value, f.name) for f in fields(value)},
            "type": str(value.type)}


def _value_from_json(data: dict[str, Any]) -> Value:
    cls = _VALUE_KINDS[data["kind"]]
    return cls(**{k: v for k, v in data.items() if k not in ("kind", "type")}, type=TensorType.parse(data["type"]))


def _arg_to_json(arg: Arg) -> dict[str, str]:
    if isinstance(arg, ValueArg):
        return {"value": arg.value}
    if isinstance(arg, ExtraArg):
        return {"extra": arg.name}
    return {"kv_cache": arg.half}


def _arg_from_json(data: dict[str, str]) -> Arg:
    ((kind, name),) = data.items()
    kinds = {"value": ValueArg, "extra": ExtraArg, "kv_cache": KVCacheArg}
    return kinds[kind](name)


def _step_to_json(step: Step | HostStep) -> dict[str, Any]:
    if isinstance(step, HostStep):
        return {"kind": "host", "node": step.node, "op": step.op, "args": step.args, "loc": step.loc}
    return {"kind": "kernel", "node": step.node, "op": step.op, "kernel": step.kernel,
            "args": [_arg_to_json(a) for a in step.args], "large": step.large, "large_from": step.large_from,
            "layer": step.layer, "kv_shape": step.kv_shape, "kv_dtype": step.kv_dtype, "inplace": step.inplace,
            "knobs": step.knobs}


def _step_from_json(data: dict[str, Any]) -> Step | HostStep:
    if data["kind"] == "host":
        return HostStep(node=data["node"], op=data["op"], args=dict(data["args"]), loc=data["loc"])
    if data["kind"] != "kernel":
        raise ValueError(f"unknown step kind {data['kind']!r}")
    kv_shape = data["kv_shape"]
    return Step(node=data["node"], op=data["op"], kernel=data["kernel"],
                args=tuple(_arg_from_json(a) for a in data["args"]), large=data["large"],
                large_from=int(data["large_from"]), layer=data["layer"],
                kv_shape=tuple(kv_shape) if kv_shape is not None else None, kv_dtype=data["kv_dtype"],
                inplace=data["inplace"],
                knobs=dict(data["knobs"]))
