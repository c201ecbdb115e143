"""The `ftllm.llm` shim: a fastllm custom-model file imports graphllm's ComputeGraph unchanged.

Besides the classes it provides fastllm's node-dict helpers, for files that append raw op dicts
to ``self.graph``: ``GraphNode(name, type, value)``, ``FloatGraphNode(v)`` / ``IntGraphNode(v)``
(a number becomes a ``constant.float`` / ``constant.int`` node; a dict ``{"name": KEY}`` becomes a
``config.float`` / ``config.int`` reference to the model config's KEY).
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any, Iterator

from .graph import ComputeGraph, GraphData, GraphWeight


def GraphNode(name: str, type: str = "data", value: Any = None) -> dict[str, Any]:  # noqa: N802 (fastllm's name)
    """fastllm's node dict; like fastllm it leaves out a falsy value (which then reads as 0)."""
    node = {"name": name, "type": type}
    if value:
        node["value"] = value
    return node


def FloatGraphNode(v: Any) -> Any:  # noqa: N802
    """A float constant node for a number, a config.float reference for a dict; anything else as is."""
    if isinstance(v, (int, str)):
        v = float(v)
    if isinstance(v, float):
        return GraphNode("", "constant.float", v)
    return {**v, "type": "config.float"} if isinstance(v, dict) else v


def IntGraphNode(v: Any) -> Any:  # noqa: N802
    """An int constant node for a number (floats truncate), a config.int reference for a dict."""
    if isinstance(v, float):
        v = int(v)
    if isinstance(v, int):
        return GraphNode("", "constant.int", v)
    return {**v, "type": "config.int"} if isinstance(v, dict) else v


def _shim_modules() -> dict[str, types.ModuleType]:
    ftllm = types.ModuleType("ftllm")
    llm = types.ModuleType("ftllm.llm")
    llm.ComputeGraph = ComputeGraph
    llm.GraphData = GraphData
    llm.GraphWeight = GraphWeight
    llm.GraphNode = GraphNode
    llm.FloatGraphNode = FloatGraphNode
    llm.IntGraphNode = IntGraphNode
    ftllm.llm = llm
    ftllm.__path__ = []
    return {"ftllm": ftllm, "ftllm.llm": llm}


@contextlib.contextmanager
def ftllm_shim() -> Iterator[None]:
    """While a custom file is imported, `ftllm.llm` is graphllm's, even if the real ftllm is installed."""
    saved = {k: sys.modules.get(k) for k in ("ftllm", "ftllm.llm")}
    sys.modules.update(_shim_modules())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
