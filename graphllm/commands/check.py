"""`graphllm check`: run a custom model file next to the built-in description (or transformers) and report
where their values part, layer by layer."""

from __future__ import annotations

import argparse

from ..tools.check import DEFAULT_MAX_KL, DEFAULT_PROMPT, DEFAULT_RTOL, Tolerance, check_model
from .common import add_command, add_dtype_arg, add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    """Add `check` to the subcommands."""
    p = add_command(sub, "check", "run a custom model file next to the built-in description (or "
                       "transformers) and report where their values part, layer by layer")
    add_model_arg(p, custom_required=True)
    add_dtype_arg(p)
    p.add_argument("--against", default="builtin", choices=["builtin", "transformers"],
                   help="builtin: graphllm's description of the same architecture (default); transformers: "
                        "Hugging Face transformers' hidden states and logits (pip install 'graphllm[check]')")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the prompt both run on (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--tokens", type=int, default=0,
                   help="also compare this many greedy decode steps after the prompt (default: 0)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help="largest accepted max |diff| / max |reference| of a value; its cosine similarity must "
                        f"be at least 1 - rtol (default: {DEFAULT_RTOL:g})")
    p.add_argument("--tol", type=float, default=None,
                   help="judge by this largest absolute difference instead of --rtol")
    p.add_argument("--max-kl", type=float, default=DEFAULT_MAX_KL,
                   help="with a quantizing --dtype: largest accepted KL of a step's logits "
                        f"(default: {DEFAULT_MAX_KL:g})")
    p.set_defaults(func=check)


def check(a: argparse.Namespace) -> int:
    """Print the report; exit 0 when the custom model matches, 1 when it diverges."""
    report = check_model(a.model, a.custom, a.against, a.prompt, Tolerance(a.rtol, a.tol), a.tokens, a.dtype,
                         a.max_kl)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
