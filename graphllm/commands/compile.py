"""`graphllm compile`: build a model's kernels (or a text IR file's) into an artifact folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io.output import check_output_folder
from ..pipeline import build
from ..plan import ARTIFACT, ModelRef
from .common import (add_command, add_device_args, add_graph_args, add_model_arg, add_tuned_arg, graph_options,
                     print_notes)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `compile` to the subcommands."""
    p = add_command(sub, "compile", "build the model's kernels with TVM into a folder")
    p.add_argument("-o", "--output", required=True,
                   help="artifact folder to write (new, empty or an earlier artifact, which is replaced)")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that holds other files, beside them (nothing of yours is removed)")
    p.add_argument("--ir", default=None,
                   help="compile this text IR file (e.g. from `graphllm dump`) as written, instead of the model's "
                        "description (default: none)")
    add_model_arg(p)
    add_graph_args(p)
    add_device_args(p)
    add_tuned_arg(p)
    p.set_defaults(func=compile_command)


def compile_command(a: argparse.Namespace) -> int:
    """Build the graph the flags describe and write kernels.so + plan.json."""
    from ..codegen.compile import compile_graph
    from ..codegen.tuning import tuned_knobs
    from ..runtime.builds import device_target

    check_output_folder(Path(a.output).expanduser().absolute(), ARTIFACT, force=a.force)  # before the slow part
    built = build(a.model, graph_options(a, ir=a.ir), need_model=False)
    model = ModelRef.of(built.model.path) if built.model is not None else None  # run --artifact finds it there
    target = device_target(a.device, a.cuda_arch)
    chosen = tuned_knobs(built.graph, target, None, not a.no_tuned)
    print_notes([chosen.note] if chosen.note else [])
    out = compile_graph(built.graph, a.output, target, show_progress=sys.stderr.isatty(), force=a.force, model=model,
                        knobs=chosen.knobs)
    flags = [*(["-m", "MODEL"] if model is None else []), *(["--device", a.device] if a.device != "cpu" else []), *(["--dtype", a.dtype] if a.dtype else []),
             *(["--custom", a.custom] if a.custom else []), *(["--passes", ",".join(a.passes)] if a.passes else []),
             *(["--no-fuse"] if a.no_fuse else []), *(["--kv-dtype", a.kv_dtype] if a.kv_dtype else [])]
    print(f"run it with: graphllm run --artifact {' '.join([str(out), *flags])} \"PROMPT\"")
    return 0
