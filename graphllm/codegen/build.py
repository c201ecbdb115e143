"""Build PrimFuncs into one shared library (needs the TVM compiler): `build_module` -> `export_module`.

The library is loaded and called by the thin runtime (graphllm/runtime/tvm.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .target import detect_target

if TYPE_CHECKING:
    from tvm.runtime import Executable
    from tvm.tirx import PrimFunc


def build_module(funcs: Mapping[str, PrimFunc], target: Mapping[str, object] | None = None) -> Executable:
    """Compile named PrimFuncs into one module for `target` (default: this host); return the Executable."""
    import tvm

    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    return tvm.compile(mod, target=tvm.target.Target(dict(target or detect_target())))


def export_module(executable: Executable, path: str | os.PathLike) -> Path:
    """Write a built module as a shared library (atomically, so readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.so")
    executable.export_library(str(tmp))
    os.replace(tmp, path)
    return path
