"""`graphllm export`: write the model with its weights in the asked dtype, so later loads skip quantization."""

from __future__ import annotations

import argparse

from .common import add_command, add_dtype_arg, add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the subcommands."""
    p = add_command(sub, "export", "write the model with quantized weights (safetensors + config)")
    p.add_argument("-o", "--output", required=True, help="folder to write")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that holds other files, beside them (nothing of yours is removed)")
    add_dtype_arg(p)
    add_model_arg(p)
    p.set_defaults(func=export)


def export(a: argparse.Namespace) -> int:
    """Load through the reference executor (no compile) and write the folder."""
    from ..runtime.llm import LLM
    from ..tools.export import export_model

    llm = LLM.load(a.model, custom=a.custom, executor="reference", dtype=a.dtype, max_context=2)
    out = export_model(llm, a.output, force=a.force)
    print(f"wrote {out} ({llm.model.file_type} -> {a.dtype or 'as stored'}); run it with: graphllm run -m {out} \"PROMPT\"")
    return 0
