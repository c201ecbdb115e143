"""Load a user's model file (a ComputeGraph subclass ending with `__model__ = X`)."""

from __future__ import annotations

import importlib.util
import os
import traceback
from pathlib import Path

from ..errors import GraphBuildError
from .compat import ftllm_shim
from .graph import ComputeGraph


def load_model_file(path: str | os.PathLike) -> type[ComputeGraph]:
    """Import the file and return its ``__model__`` class; every failure names the file and line."""
    p = Path(path)
    if not p.is_file():
        raise GraphBuildError(f"custom model file {p} does not exist")
    spec = importlib.util.spec_from_file_location(f"graphllm_custom_{abs(hash(str(p.resolve())))}", p)
    module = importlib.util.module_from_spec(spec)
    with ftllm_shim():
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            raise GraphBuildError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from None
        except Exception as e:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == p]
            where = f"{p}:{frames[-1].lineno}" if frames else str(p)
            raise GraphBuildError(f"{where}: importing the model file failed: {type(e).__name__}: {e}") from None
    model = getattr(module, "__model__", None)
    if model is None:
        raise GraphBuildError(f"{p}: the file must end with `__model__ = YourModelClass` (no __model__ found)")
    if not (isinstance(model, type) and issubclass(model, ComputeGraph)):
        raise GraphBuildError(f"{p}: __model__ must be a ComputeGraph subclass, got {model!r}")
    return model
