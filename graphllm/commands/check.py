"""`graphllm check`: run a custom model file next to the built-in description (or transformers) and report
where their values part, layer by layer."""

from __future__ import annotations

import argparse

from ..tools.check import DEFAULT_PROMPT, check_model
from .common import add_command, add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    """Add `check` to the subcommands."""
    p = add_command(sub, "check", "run a custom model file next to the built-in description (or "
                       "transformers) and report where their values part, layer by layer")
    add_model_arg(p, custom_required=True)
    p.add_argument("--against", default="builtin", choices=["builtin", "transformers"],
                   help="builtin: graphllm's description of the same architecture (default); transformers: "
                        "Hugging Face transformers' hidden states and logits (needs torch and transformers)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the prompt both run on (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--tol", type=float, default=1e-4, help="largest accepted absolute difference (default: 1e-4)")
    p.set_defaults(func=check)


def check(a: argparse.Namespace) -> int:
    """Print the report; exit 0 when the custom model matches, 1 when it diverges."""
    report = check_model(a.model, a.custom, a.against, a.prompt, a.tol)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
