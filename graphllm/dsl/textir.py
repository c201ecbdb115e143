"""The text IR: a Graph printed as readable SSA text and parsed back (grammar in textir.lark).

Every pass's output can be printed, diffed and hand-written; ``parse_graph(print_graph(g))`` is a
graph equal to ``g`` (nodes, ops, attrs with their exact Python types, types, names, source
locations, fused groups, edges with ports, outputs and config).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from lark import Lark, Token, Transformer, UnexpectedInput, UnexpectedToken
from lark.exceptions import VisitError
from lark.lexer import PatternStr

from ..errors import GraphBuildError
from .graph import INPUT_OP, WEIGHT_OP, Graph, SourceLoc
from .types import DTYPES, TensorType

_TERMINALS = {"VALUE": "a value (%x, @w, $in, !Op#1)", "NAME": "a name", "STRING": "a string",
              "INT": "an int", "FLOAT": "a float", "TYPE": "a type like f32[T,64]", "LOC": "@ file:line",
              "JSON": "a JSON object", "_NL": "end of line", "$END": "end of text"}
_BARE_PATH = re.compile(r'[^\s"]+')


@functools.cache
def _parser() -> Lark:
    return Lark(Path(__file__).with_name("textir.lark").read_text(), parser="lalr", maybe_placeholders=True)


@functools.cache
def _terminal(name: str) -> re.Pattern[str]:
    return re.compile(_parser().get_terminal(name).pattern.to_regexp())


# ---------------------------------------------------------------- printing

def _quoted(text: str, terminal: str) -> str:
    """The text as it is when the terminal matches it whole, else as a JSON string."""
    if _terminal(terminal).fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _literal(value: Any) -> str:
    """An attr value: bools, ints, floats (repr, so 1e-05 and 0.125 come back exactly), strings, None, lists, objects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quoted(str(k), 'NAME')}={_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"the text IR cannot hold the attr value {value!r} ({type(value).__name__}); "
                    f"use bool, int, float, str, None or a list or {{key=value}} object of them")


def _implied_name(node_id: str) -> str:
    """The data/weight/input name a node id stands for ($x, @x, %x, %x#3 -> x; !Op#1 -> '')."""
    if node_id[:1] in ("$", "@"):
        return node_id[1:]
    if node_id[:1] == "%":
        return re.sub(r"#\d+$", "", node_id[1:])
    return ""


def _node_line(graph: Graph, node: str) -> str:
    d = graph[node]
    value = _quoted(node, "VALUE")
    typed = f"{value} : {d['type']}" if d["type"] is not None else value
    ports = graph.inputs(node)
    ports.update((port, src) for src, _, port in graph.nx.in_edges(node, keys=True) if port not in ports)
    if d["op"] in (INPUT_OP, WEIGHT_OP) and not ports and d["attrs"] == {"name": d["name"]}:
        line = f"{'input' if d['op'] == INPUT_OP else 'weight'} {typed}"
    else:
        args = ", ".join(f"{_quoted(p, 'NAME')}={_quoted(src, 'VALUE')}" for p, src in ports.items())
        line = f"{typed} = {d['op']}({args})"
        if d["attrs"]:
            line += " {" + ", ".join(f"{_quoted(k, 'NAME')}={_literal(v)}" for k, v in d["attrs"].items()) + "}"
    if d["name"] != _implied_name(node):
        line += f" name {_quoted(d['name'], 'NAME')}"
    if d.get("group") is not None:
        line += f" group {_quoted(d['group'], 'NAME')}"
    if d["loc"] is not None:
        path = d["loc"].file if _BARE_PATH.fullmatch(d["loc"].file) else json.dumps(d["loc"].file, ensure_ascii=False)
        line += f"  @ {path}:{d['loc'].line}"
    return line


def print_graph(graph: Graph) -> str:
    """The graph as text IR, nodes in execution order (so two passes' outputs diff line by line)."""
    model_type = graph.config.get("model_type")
    header = f"graph {_quoted(model_type, 'NAME')} {{" if isinstance(model_type, str) else "graph {"
    lines = [header, f"  config {json.dumps(graph.config, ensure_ascii=False)}"]
    lines += [f"  {_node_line(graph, n)}" for n in graph.order()]
    lines += [f"  output {_quoted(name, 'NAME')} = {_quoted(n, 'VALUE')}" for name, n in graph.outputs.items()]
    return "\n".join(lines + ["}"]) + "\n"


# ---------------------------------------------------------------- parsing

class _IRError(Exception):
    """A semantic error at a token; parse_graph adds the source name, line and column."""

    def __init__(self, token: Token, message: str) -> None:
        super().__init__(message)
        self.token = token


class _Node(NamedTuple):
    id: str
    token: Token
    op: str
    type: TensorType | None
    inputs: list[tuple[str, Token, str, Token]]  # (port, its token, source id, its token)
    attrs: dict[str, Any]
    name: str
    group: str | None
    loc: SourceLoc | None


def _string(token: Token) -> str:
    try:
        return json.loads(token, strict=False)
    except json.JSONDecodeError as e:
        raise _IRError(token, f"bad string {token}: {e.msg}") from None


def _type(token: Token | None) -> TensorType | None:
    if token is None:
        return None
    try:
        return TensorType.parse(token)
    except ValueError as e:
        dtypes = ", ".join(str(TensorType((), d)).removesuffix("[]") for d in DTYPES)
        raise _IRError(token, f"bad type {token}: {e} (dtypes: {dtypes}; block formats: q8_0, q4_0, q4_1, "
                              f"and with g<GROUP> for another even group size, e.g. q4_1g128)") from None


def _unique(pairs: list[tuple[str, Token, Any]], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, token, value in pairs:
        if key in out:
            raise _IRError(token, f"{what} {key!r} given twice")
        out[key] = value
    return out


class _ToStatements(Transformer):
    """Parse tree -> a list of statements: ('config', dict, token), _Node, ('output', ...)."""

    def start(self, items: list[Any]) -> list[Any]:
        return items[1:]  # items[0]: the graph's label, which only informs readers

    def value(self, items: list[Token]) -> tuple[str, Token]:
        (token,) = items
        return (_string(token) if token.type == "STRING" else str(token)), token

    label = value

    def int(self, items: list[Token]) -> int:
        return int(items[0])

    def float(self, items: list[Token]) -> float:
        return float(items[0])

    def string(self, items: list[Token]) -> str:
        return _string(items[0])

    def true(self, items: list[Any]) -> bool:
        return True

    def false(self, items: list[Any]) -> bool:
        return False

    def null(self, items: list[Any]) -> None:
        return None

    def list(self, items: list[Any]) -> list[Any]:
        return items

    def member(self, items: list[Any]) -> tuple[str, Token, Any]:
        (key, token), value = items
        return key, token, value

    def object(self, items: list[Any]) -> dict[str, Any]:
        return _unique(items, "key")

    def attr(self, items: list[Any]) -> tuple[str, Token, Any]:
        (key, token), value = items
        return key, token, value

    def attrs(self, items: list[Any]) -> dict[str, Any]:
        return _unique([i for i in items if i is not None], "attr")

    def arg(self, items: list[Any]) -> tuple[str, Token, str, Token]:
        (port, port_token), (src, src_token) = items
        return port, port_token, src, src_token

    def meta(self, items: list[Any]) -> tuple[str | None, str | None, SourceLoc | None]:
        name, group, loc = items
        if loc is not None:
            path, _, line = loc[1:].strip().rpartition(":")
            loc = SourceLoc(_string(Token("STRING", path, line=loc.line, column=loc.column))
                            if path.startswith('"') else path, int(line))
        return (name and name[0], group and group[0], loc)

    def config(self, items: list[Token]) -> tuple[str, dict[str, Any], Token]:
        (token,) = items
        try:
            return "config", json.loads(token), token
        except json.JSONDecodeError as e:
            raise _IRError(token, f"bad config JSON: {e.msg} at character {e.pos + 1}") from None

    def _decl(self, op: str, items: list[Any]) -> _Node:
        (node, token), type_token, (name, group, loc) = items
        name = _implied_name(node) if name is None else name
        return _Node(node, token, op, _type(type_token), [], {"name": name}, name, group, loc)

    def input_node(self, items: list[Any]) -> _Node:
        return self._decl(INPUT_OP, items)

    def weight_node(self, items: list[Any]) -> _Node:
        return self._decl(WEIGHT_OP, items)

    def op_node(self, items: list[Any]) -> _Node:
        (node, token), type_token, op, *args, attrs, (name, group, loc) = items
        args = [a for a in args if a is not None]
        _unique([(port, port_token, src) for port, port_token, src, _ in args], "port")
        name = _implied_name(node) if name is None else name
        return _Node(node, token, str(op), _type(type_token), args, attrs or {}, name, group, loc)

    def output(self, items: list[Any]) -> tuple[str, str, Token, str, Token]:
        (name, token), (src, src_token) = items
        return "output", name, token, src, src_token


def _build(statements: list[Any]) -> Graph:
    g = Graph()
    config_seen = False
    for s in statements:
        if isinstance(s, _Node):
            if s.id in g:
                raise _IRError(s.token, f"{s.id} is defined twice")
            for _, _, src, src_token in s.inputs:
                if src not in g:
                    raise _IRError(src_token, f"{src} is used before it is defined")
            g.add(s.id, s.op, s.attrs, name=s.name, loc=s.loc, type=s.type,
                  inputs={port: src for port, _, src, _ in s.inputs})
            if s.group is not None:
                g[s.id]["group"] = s.group
        elif s[0] == "config":
            if config_seen:
                raise _IRError(s[2], "the graph has two config lines")
            g.config, config_seen = s[1], True
        else:
            _, name, token, src, src_token = s
            if name in g.outputs:
                raise _IRError(token, f"output {name!r} is given twice")
            if src not in g:
                raise _IRError(src_token, f"{src} is used before it is defined")
            g.outputs[name] = src
    return g


def _expected(names: set[str]) -> str:
    described = []
    for name in sorted(names):
        pattern = _parser().get_terminal(name).pattern if name != "$END" else None
        described.append(f'"{pattern.value}"' if isinstance(pattern, PatternStr) else _TERMINALS.get(name, name))
    return ", ".join(sorted(set(described)))


def parse_graph(text: str, source: str = "<ir>") -> Graph:
    """Parse text IR into a Graph; a mistake is a GraphBuildError naming source:line:column."""
    try:
        return _build(_ToStatements().transform(_parser().parse(text)))
    except UnexpectedToken as e:
        got = _TERMINALS[e.token.type] if e.token.type in ("$END", "_NL") else repr(str(e.token))
        line, column = (e.line, e.column) if e.line and e.line > 0 else (text.count("\n") + 1, 1)
        raise GraphBuildError(f"{source}:{line}:{column}: unexpected {got}; expected {_expected(e.accepts or e.expected)}") from None
    except UnexpectedInput as e:
        raise GraphBuildError(f"{source}:{e.line}:{e.column}: unexpected character "
                              f"{text[e.pos_in_stream:e.pos_in_stream + 1]!r}") from None
    except (_IRError, VisitError) as e:
        error = e.orig_exc if isinstance(e, VisitError) else e  # lark wraps what the transformer raises
        if not isinstance(error, _IRError):
            raise
        raise GraphBuildError(f"{source}:{error.token.line}:{error.token.column}: {error}") from None


# ---------------------------------------------------------------- equality

def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types (1 != 1.0 != True), floats compared by repr (so nan == nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return repr(a) == repr(b) if isinstance(a, float) else a == b


def graph_difference(a: Graph, b: Graph, *, locs: bool = True) -> str | None:
    """The first difference between two graphs, described (for test messages), or None if equal."""
    if not _same(a.config, b.config):
        return f"configs differ: {a.config} != {b.config}"
    if a.outputs != b.outputs:
        return f"outputs differ: {a.outputs} != {b.outputs}"
    if set(a.nx.nodes) != set(b.nx.nodes):
        return f"nodes only in the first: {sorted(set(a.nx.nodes) - set(b.nx.nodes))}, " \
               f"only in the second: {sorted(set(b.nx.nodes) - set(a.nx.nodes))}"
    fields = ("op", "attrs", "type", "name", "group") + (("loc",) if locs else ())
    for node in a.nx.nodes:
        for key in fields:
            if not _same(a[node].get(key), b[node].get(key)):
                return f"{node}: {key} {a[node].get(key)!r} != {b[node].get(key)!r}"
    edges_a, edges_b = set(a.nx.edges(keys=True)), set(b.nx.edges(keys=True))
    if edges_a != edges_b:
        return f"edges (source, consumer, port) only in the first: {sorted(edges_a - edges_b)}, " \
               f"only in the second: {sorted(edges_b - edges_a)}"
    return None


def graphs_equal(a: Graph, b: Graph, *, locs: bool = True) -> bool:
    """Same nodes, ops, attrs, types, names, groups, edges with ports, outputs and config (and locs)."""
    return graph_difference(a, b, locs=locs) is None
