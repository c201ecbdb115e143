"""`graphllm bench`: prefill/decode speed, first-token time, memory and bandwidth on this machine."""

from __future__ import annotations

import argparse
import json

from .common import add_command, add_model_args, load_llm


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bench` to the subcommands."""
    p = add_command(sub, "bench", "prefill/decode tokens/s, first-token time, memory, bandwidth")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length prefilled in one step")
    p.add_argument("--gen-tokens", type=int, default=128, help="tokens decoded one by one")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement (their median is reported)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_args(p)
    p.set_defaults(func=bench)


def bench(a: argparse.Namespace) -> int:
    """Measure and print (text or JSON)."""
    from ..tools.bench import format_bench, run_bench

    if a.max_context is None:
        a.max_context = a.prompt_tokens + a.gen_tokens + 1
    llm = load_llm(a, tokenizer=False)  # token ids only: as llama-bench, it never reads the tokenizer
    result = run_bench(llm, a.prompt_tokens, a.gen_tokens, a.repeat)
    print(json.dumps(result, indent=1) if a.json else format_bench(result))
    return 0
