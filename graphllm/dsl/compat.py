"""The `ftllm.llm` shim: a fastllm custom-model file imports graphllm's ComputeGraph unchanged."""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Iterator

from .graph import ComputeGraph, GraphData, GraphWeight


def _shim_modules() -> dict[str, types.ModuleType]:
    ftllm = types.ModuleType("ftllm")
    llm = types.ModuleType("ftllm.llm")
    llm.ComputeGraph = ComputeGraph
    llm.GraphData = GraphData
    llm.GraphWeight = GraphWeight
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
