"""ComputeGraph (the model-description class users subclass) and Graph (the recorded dataflow graph).

A model's ``build()`` calls op methods such as ``self.Linear(...)`` on ``self.data[...]`` and
``self.weight[...]`` handles. Recording turns those calls into a networkx MultiDiGraph in SSA form:
one node per op, one edge per value read (keyed by the consumer's port), a new node each time a
data name is written, and the user's file and line on every node.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import networkx as nx

from ..errors import ConfigError, GraphBuildError
from . import ops as O
from .arch import ArchConfig, context_limit
from .inputs import CACHE_PREFIXES, OUTPUT, RESERVED_INPUTS
from .types import TensorType

INPUT_OP = "Input"
TIED_HEAD = "lm_head.weight"  # a Linear weight that is expected to be tied to the embedding table (no note)
WEIGHT_OP = "Weight"
_DSL_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_NODE_TYPES = ("config.int", "config.float")  # fastllm's {"name": key, "type": ...}: a config value
CONSTANT_NODE_TYPES = ("constant.int", "constant.float")  # fastllm's {"name": "", "type": ..., "value": v}


@dataclass(frozen=True)
class SourceLoc:
    """Where in the user's model file an op was called."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def caller_loc() -> SourceLoc | None:
    """The first stack frame outside graphllm.dsl: the line of the user's model file."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_DSL_DIR + os.sep):
            return SourceLoc(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


class _Names:
    """A name handle: indexing concatenates (``h["a."][i][".b"]`` names ``a.<i>.b``)."""

    kind = ""

    def __init__(self, pre: str = "") -> None:
        self.pre = pre

    def __getitem__(self, index: Any) -> "_Names":
        return type(self)(self.pre + str(index))

    def __repr__(self) -> str:
        return f"{self.kind}[{self.pre!r}]"


class GraphData(_Names):
    """``self.data[name]``: a named intermediate value."""

    kind = "data"


class GraphWeight(_Names):
    """``self.weight[name]``: a checkpoint tensor."""

    kind = "weight"


class ModelConfig(dict):
    """config.json as a dict; a missing key is an error naming the key and the model file's line."""

    def __missing__(self, key: Any) -> Any:
        loc = caller_loc()
        raise GraphBuildError(f"{loc}: config has no key {key!r}"
                              + _suggest(str(key), [str(k) for k in self]))


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


class Graph:
    """The dataflow graph: op nodes in a networkx MultiDiGraph; edge key = the consumer's port.

    Node attributes: ``op`` (name), ``attrs`` (dict), ``type`` (TensorType of its one output, or
    None), ``name`` (the user's data/weight/input name), ``loc`` (SourceLoc or None).
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.nx = nx.MultiDiGraph()
        self.config: dict[str, Any] = dict(config or {})
        self.outputs: dict[str, str] = {}

    def add(self, node_id: str, op: str, attrs: dict[str, Any] | None = None, *, name: str = "",
            loc: SourceLoc | None = None, type: TensorType | None = None,
            inputs: Mapping[str, str] | None = None) -> str:
        """Add an op node and the edges of the values it reads."""
        if node_id in self.nx:
            raise ValueError(f"node {node_id} exists")
        self.nx.add_node(node_id, op=op, attrs=dict(attrs or {}), name=name, loc=loc, type=type)
        for port, src in (inputs or {}).items():
            self.nx.add_edge(src, node_id, key=port)
        return node_id

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.nx

    def __getitem__(self, node_id: str) -> dict[str, Any]:
        return self.nx.nodes[node_id]

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def inputs(self, node_id: str) -> dict[str, str]:
        """Port -> producing node, in the op spec's port order."""
        found = {port: src for src, _, port in self.nx.in_edges(node_id, keys=True)}
        spec = O.get_spec(self[node_id]["op"])
        if spec is None:
            return found
        return {p.name: found[p.name] for p in spec.input_ports if p.name in found}

    def users(self, node_id: str) -> list[tuple[str, str]]:
        """(consumer node, port) pairs reading this node's value."""
        return [(dst, port) for _, dst, port in self.nx.out_edges(node_id, keys=True)]

    def order(self) -> list[str]:
        """Topological order, ties broken by insertion order (so it is the order ops were recorded)."""
        rank = {n: i for i, n in enumerate(self.nx.nodes)}
        return list(nx.lexicographical_topological_sort(self.nx, key=rank.__getitem__))

    def nodes_of(self, op: str) -> Iterator[str]:
        """Every node of one op type, in insertion order."""
        return (n for n, d in self.nx.nodes(data=True) if d["op"] == op)

    def reorder(self, order: Iterable[str], before: Mapping[str, Iterable[str]] | None = None) -> None:
        """Re-insert the nodes in ``order`` (a topological order) with each ``before[n]`` just ahead of n, so later
        order() ties follow it; a node takes its first place, names no longer in the graph are skipped. O(n)."""
        before = before or {}
        placed = dict.fromkeys(m for n in order for m in (*before.get(n, ()), n) if m in self.nx)
        if len(placed) != len(self):
            raise ValueError(f"reorder: {len(self) - len(placed)} node(s) missing from the order")
        old = self.nx
        self.nx = nx.MultiDiGraph()
        self.nx.add_nodes_from((n, old.nodes[n]) for n in placed)
        self.nx.add_edges_from(old.edges(keys=True))

    def set_input(self, node_id: str, port: str, src: str | None) -> None:
        """Make the node read ``src`` on ``port`` instead of what it read there (None: read nothing there)."""
        for old in [s for s, _, p in self.nx.in_edges(node_id, keys=True) if p == port]:
            self.nx.remove_edge(old, node_id, key=port)
        if src is not None:
            self.nx.add_edge(src, node_id, key=port)

    def set_inputs(self, node_id: str, inputs: Mapping[str, str]) -> None:
        """Make the node read exactly ``inputs`` (port -> producer): each port set in turn, the others cut."""
        for port, src in inputs.items():
            self.set_input(node_id, port, src)
        for port in [p for _, _, p in self.nx.in_edges(node_id, keys=True) if p not in inputs]:
            self.set_input(node_id, port, None)

    def replace_uses(self, old: str, new: str) -> None:
        """Every reader of ``old`` (graph outputs included) reads ``new`` instead; ``old`` stays, unread."""
        for dst, port in self.users(old):
            self.set_input(dst, port, new)
        for name, value in self.outputs.items():
            if value == old:
                self.outputs[name] = new

    def is_used(self, node_id: str) -> bool:
        """True when something observes the node: a reader, a graph output, or its op's side effect (Print)."""
        spec = O.get_spec(self[node_id]["op"])
        return (self.nx.out_degree(node_id) > 0 or node_id in self.outputs.values()
                or (spec is not None and spec.side_effect))

    def drop_unused(self, nodes: Iterable[str]) -> None:
        """Remove those of ``nodes`` that are not used (is_used), then whatever only they read, transitively."""
        todo = list(nodes)
        while todo:
            node = todo.pop()
            if node in self.nx and not self.is_used(node):
                todo.extend(self.nx.predecessors(node))
                self.nx.remove_node(node)

    def copy(self) -> "Graph":
        """A deep copy (passes return new graphs, never edit their input)."""
        g = Graph(copy.deepcopy(self.config))
        g.nx = self.nx.copy()
        for n in g.nx.nodes:
            g.nx.nodes[n]["attrs"] = dict(g.nx.nodes[n]["attrs"])
        g.outputs = dict(self.outputs)
        return g

    def where(self, node_id: str) -> str:
        """A node described for error messages: 'file.py:12: Linear -> data['q']'."""
        d = self[node_id]
        loc = f"{d['loc']}: " if d["loc"] else ""
        return f"{loc}{d['op']}" + (f" -> {d['name']!r}" if d["name"] else "")


class _Recorder:
    """Records op calls of one build() into a Graph."""

    def __init__(self, graph: Graph, weight_types: Mapping[str, TensorType], model: "ComputeGraph",
                 notes: list[str] | None) -> None:
        self.graph = graph
        self.weight_types = weight_types
        self.model = model  # its config (which build() may change or replace) answers config references
        self.notes = notes
        self.current: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.count = 0
        self.embedding: str | None = None  # the weight of the last Embedding: absent Linear weights read it

    def read_data(self, handle: Any, op: str, port: str, loc: SourceLoc | None) -> str:
        if not isinstance(handle, GraphData):
            raise GraphBuildError(f"{loc}: {op}: port {port!r} expects data[...], got {handle!r}")
        name = handle.pre
        if name in self.current:
            return self.current[name]
        if name.startswith(CACHE_PREFIXES):
            raise GraphBuildError(f"{loc}: {op}: data[{name!r}] is a KV cache handle; only "
                                  f"FusedAttention's k/v ports take it")
        if name in RESERVED_INPUTS:
            node = self.graph.add(f"${name}", INPUT_OP, {"name": name}, name=name)
            self.current[name] = node
            return node
        raise GraphBuildError(f"{loc}: {op}: data[{name!r}] is read before anything writes it"
                              + _suggest(name, list(self.current)))

    def read_weight(self, handle: Any, op: str, port: str, optional: bool, loc: SourceLoc | None) -> str | None:
        if not isinstance(handle, GraphWeight):
            if optional and handle is None:
                return None
            raise GraphBuildError(f"{loc}: {op}: port {port!r} expects weight[...], got {handle!r}")
        name = handle.pre
        if name not in self.weight_types:
            if optional:
                return None
            if not (op == "Linear" and port == "weight" and self.embedding):
                raise GraphBuildError(f"{loc}: {op}: weight {name!r} is not in the checkpoint"
                                      + _suggest(name, list(self.weight_types)))
            if self.notes is not None and not name.endswith(TIED_HEAD):
                self.notes.append(f"{loc}: weight {name!r} is not in the checkpoint: Linear reads the "
                                  f"embedding {self.embedding!r} instead (tied weights, as in fastllm)")
            name = self.embedding
        node = f"@{name}"
        if node not in self.graph:
            self.graph.add(node, WEIGHT_OP, {"name": name}, name=name, type=self.weight_types[name])
        return node

    def write(self, name: str) -> str:
        version = self.versions.get(name, -1) + 1
        self.versions[name] = version
        node = f"%{name}" if version == 0 else f"%{name}#{version}"
        self.current[name] = node
        return node

    def record(self, spec: O.OpSpec, args: tuple, kwargs: dict) -> None:
        loc = caller_loc()
        bound = _bind(spec, args, kwargs, loc)
        inputs: dict[str, str] = {}
        attrs: dict[str, Any] = {}
        out_name = tied = None
        for p in spec.params:
            value = bound.get(p.name)
            if p.kind in (O.IN, O.INOUT):
                if value is None and p.optional:
                    continue
                inputs[p.name] = self.read_data(value, spec.name, p.name, loc)
                if p.kind == O.INOUT:
                    out_name = value.pre
            elif p.kind == O.WEIGHT:
                node = self.read_weight(value, spec.name, p.name, p.optional, loc)
                if node is not None:
                    inputs[p.name] = node
                    if self.graph[node]["name"] != value.pre:
                        tied = value.pre  # absent: fastllm's rule read the embedding table instead
            elif p.kind == O.OUT:
                if not isinstance(value, GraphData) or not value.pre:
                    raise GraphBuildError(f"{loc}: {spec.name}: port {p.name!r} expects data[...], got {value!r}")
                out_name = value.pre
            elif p.kind == O.ATTR:
                if value is not None or not p.optional:
                    attrs[p.name] = _attr(self.resolve(value, p, spec.name, loc), p, spec.name, loc)
            elif p.kind == O.CACHE:
                attrs.setdefault("layer", _cache_layer(value, spec.name, p.name, loc))
                if attrs["layer"] != _cache_layer(value, spec.name, p.name, loc):
                    raise GraphBuildError(f"{loc}: {spec.name}: k and v name different layers' caches")
        if out_name is not None:
            node = self.write(out_name)
        else:
            self.count += 1
            node = f"!{spec.name}#{self.count}"
        self.graph.add(node, spec.name, attrs, name=out_name or "", loc=loc, inputs=inputs)
        if tied is not None:
            self.graph[node]["tied"] = tied  # verify names it if the table's shape does not fit
        if spec.name == "Embedding":
            self.embedding = self.graph[inputs["weight"]]["name"]

    def record_dict(self, op: Any) -> None:
        """Record a raw fastllm op dict ``{"type": "Linear", "nodes": {"input": ..., ...}}``."""
        loc = caller_loc()
        if not isinstance(op, Mapping) or not isinstance(op.get("type"), str):
            raise GraphBuildError(f"{loc}: self.graph.append expects an op dict "
                                  f"{{'type': 'OpName', 'nodes': {{port: value}}}}, got {op!r}")
        spec = O.get_spec(op["type"])
        if spec is None:
            raise GraphBuildError(f"{loc}: unknown op type {op['type']!r} in an op dict appended to self.graph"
                                  + _suggest(op["type"], list(O.REGISTRY)))
        nodes = op.get("nodes") or {}
        if not isinstance(nodes, Mapping):
            raise GraphBuildError(f"{loc}: {spec.name}: 'nodes' must be a dict of port -> value, got {nodes!r}")
        self.record(spec, (), {port: _from_node(value) for port, value in nodes.items()})

    def resolve(self, value: Any, p: O.Param, op: str, loc: SourceLoc | None) -> Any:
        """An attribute given as a fastllm node dict: a constant's value or a config lookup."""
        if not isinstance(value, Mapping):
            return value
        kind = value.get("type", "")
        if kind in CONSTANT_NODE_TYPES:
            return value.get("value", 0)  # fastllm's GraphNode leaves out a value of 0
        key = value.get("name")
        if kind not in CONFIG_NODE_TYPES + ("",) or not isinstance(key, str):
            raise GraphBuildError(f"{loc}: {op}: {p.name!r} must be a constant or a config reference "
                                  f"{{'name': KEY, 'type': 'config.float'}}, got {value!r}")
        config = self.model.config
        found = _config_lookup(config, key)
        if found is None:
            raise GraphBuildError(f"{loc}: {op}: {p.name!r} reads config key {key!r}, which the config lacks"
                                  + _suggest(key, [str(k) for k in config]))
        try:
            return int(float(found)) if kind == "config.int" else float(found) if kind == "config.float" else found
        except (TypeError, ValueError):
            raise GraphBuildError(f"{loc}: {op}: {p.name!r}: config {key!r} = {found!r} is not a number") from None


def _from_node(value: Any) -> Any:
    """A port value of a raw op dict: fastllm's data/weight node dicts become handles; the rest stays."""
    if isinstance(value, Mapping) and value.get("type") in ("data", "weight") and isinstance(value.get("name"), str):
        return GraphData(value["name"]) if value["type"] == "data" else GraphWeight(value["name"])
    return value


def _config_lookup(config: Mapping[str, Any], key: str) -> Any:
    """config[key]; a dotted key reads nested dicts, as fastllm flattens config.json ("rope_scaling.type")."""
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _bind(spec: O.OpSpec, args: tuple, kwargs: dict, loc: SourceLoc | None) -> dict[str, Any]:
    names = [p.name for p in spec.params]
    if len(args) > len(names):
        raise GraphBuildError(f"{loc}: {spec.name} takes {len(names)} arguments ({', '.join(names)}), "
                              f"got {len(args)}")
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise GraphBuildError(f"{loc}: {spec.name} has no parameter {k!r} (it takes {', '.join(names)})")
        if k in bound:
            raise GraphBuildError(f"{loc}: {spec.name}: parameter {k!r} given twice")
        bound[k] = v
    for p in spec.params:
        if p.name not in bound:
            if p.kind == O.ATTR and p.default is not None:
                bound[p.name] = p.default
            elif not (p.optional or p.kind == O.IGNORED):
                raise GraphBuildError(f"{loc}: {spec.name} is missing its argument {p.name!r}")
    return bound


def _attr(value: Any, p: O.Param, op: str, loc: SourceLoc | None) -> Any:
    if isinstance(value, (GraphData, GraphWeight)):
        raise GraphBuildError(f"{loc}: {op}: {p.name!r} is a constant ({p.type.__name__}), got {value!r}")
    try:
        if p.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not a whole number")
        return p.type(value) if p.type else value
    except (TypeError, ValueError) as e:
        raise GraphBuildError(f"{loc}: {op}: {p.name!r} must be {p.type.__name__}, got {value!r} ({e})")


def _cache_layer(value: Any, op: str, port: str, loc: SourceLoc | None) -> int:
    name = value.pre if isinstance(value, GraphData) else None
    for prefix in CACHE_PREFIXES:
        if name and name.startswith(prefix) and name[len(prefix):].isdigit():
            return int(name[len(prefix):])
    raise GraphBuildError(f"{loc}: {op}: port {port!r} expects data['pastKey.'][i] / data['pastValue.'][i], "
                          f"got {value!r}")


def _op_method(spec: O.OpSpec) -> Callable[..., None]:
    def method(self: "ComputeGraph", *args: Any, **kwargs: Any) -> None:
        if self._recorder is None:
            raise GraphBuildError(f"{caller_loc()}: {spec.name} called outside build()")
        self._recorder.record(spec, args, kwargs)

    method.__name__ = spec.name
    method.__doc__ = spec.doc
    return method


class OpList(list):
    """``self.graph``: fastllm's op list; an op dict appended to it is recorded like an op method call."""

    def __init__(self, owner: "ComputeGraph", ops: Any = ()) -> None:
        super().__init__()
        self._owner = owner
        self.extend(ops)

    def append(self, op: Any) -> None:
        """Record the op dict (inside build() only) and keep it in the list."""
        recorder = getattr(self._owner, "_recorder", None)
        if recorder is None:
            raise GraphBuildError(f"{caller_loc()}: ops can be appended to self.graph only inside build()")
        recorder.record_dict(op)
        super().append(op)

    def extend(self, ops: Any) -> None:
        """Append each op dict in order."""
        for op in ops:
            self.append(op)

    def __iadd__(self, ops: Any) -> "OpList":
        self.extend(ops)
        return self


class ComputeGraph:
    """Base class of model descriptions: subclass it, write ``build()``, end the file with ``__model__``."""

    def __init__(self) -> None:
        self.weight = GraphWeight()
        self.data = GraphData()
        self.config: ModelConfig = ModelConfig()
        self.graph = []
        self._recorder: _Recorder | None = None
        self._arch: ArchConfig | None = None

    @property
    def arch(self) -> ArchConfig:
        """The typed view of self.config that built-in descriptions read; parsed on first use, its
        fallbacks noted once (fastllm files keep reading self.config, a plain dict)."""
        if self._arch is None:
            self._arch = ArchConfig.from_config(self.config, self._recorder.notes if self._recorder else None)
        return self._arch

    @property
    def graph(self) -> OpList:
        """The ops appended as raw dicts (fastllm's ``self.graph``); appending records them."""
        return self._ops

    @graph.setter
    def graph(self, ops: Any) -> None:
        if ops is not getattr(self, "_ops", None):  # `self.graph += [...]` assigns the same list back
            self._ops = OpList(self, ops)

    def build(self) -> None:
        """Describe the model by calling op methods; subclasses override it."""
        raise NotImplementedError


for _spec in O.REGISTRY.values():
    setattr(ComputeGraph, _spec.name, _op_method(_spec))


def trace(model: type[ComputeGraph] | ComputeGraph, config: Mapping[str, Any],
          weight_types: Mapping[str, TensorType], *, notes: list[str] | None = None) -> Graph:
    """Run a description's build() and return the recorded graph (types are set by the verify pass)."""
    instance = model() if isinstance(model, type) else model
    instance.config = ModelConfig(copy.deepcopy(dict(config)))
    instance.weight, instance.data, instance.graph, instance._arch = GraphWeight(), GraphData(), [], None
    graph = Graph()
    recorder = instance._recorder = _Recorder(graph, weight_types, instance, notes)
    try:
        instance.build()
    except (GraphBuildError, ConfigError):
        raise
    except Exception as e:
        raise GraphBuildError(f"{_user_frame(e, type(instance))}: build() failed: {type(e).__name__}: {e}") from e
    finally:
        instance._recorder = None
    cfg = dict(instance.config)
    if "max_positions" not in cfg:  # a fastllm file sets it; one that read self.arch took the config's limit
        try:
            cfg["max_positions"] = instance._arch.max_positions if instance._arch else context_limit(cfg, notes)
        except ConfigError as e:
            raise GraphBuildError(f"{_class_file(type(instance))}: set config['max_positions'] in build() ({e})") from None
    graph.config = cfg
    if OUTPUT not in recorder.current:
        raise GraphBuildError(f"{_class_file(type(instance))}: build() never writes data[{OUTPUT!r}], "
                              f"the model's output")
    graph.outputs[OUTPUT] = recorder.current[OUTPUT]
    return graph


def _build_code(cls: type):
    """The code object of the class's build() (its file is the model file, even for exec'd modules)."""
    build = getattr(cls, "build", None)
    return getattr(build, "__code__", None)


def _class_file(cls: type) -> str:
    code = _build_code(cls)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else cls.__name__


def _user_frame(e: BaseException, cls: type) -> str:
    """file:line of the deepest traceback frame in the model's own file, for errors inside build()."""
    import traceback

    code = _build_code(cls)
    target = os.path.abspath(code.co_filename) if code else ""
    loc = _class_file(cls)
    for fs in traceback.extract_tb(e.__traceback__):
        if os.path.abspath(fs.filename) == target:
            loc = f"{fs.filename}:{fs.lineno}"
    return loc
