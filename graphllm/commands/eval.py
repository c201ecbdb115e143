"""`graphllm eval`: perplexity on a text file and the mean KL divergence from the float32 model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import GraphLLMError
from .common import add_command, add_dtype_arg, add_executor_args, add_kv_dtype_arg, add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    """Add `eval` to the subcommands."""
    p = add_command(sub, "eval", "perplexity of a text file and KL divergence from float32")
    p.add_argument("--text", required=True, help="a UTF-8 text file")
    p.add_argument("--window", type=int, default=256, help="tokens per evaluation window (fresh context)")
    p.add_argument("--chunk", type=int, default=64, help="tokens per step")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens (default: all)")
    add_dtype_arg(p)
    add_kv_dtype_arg(p)
    add_executor_args(p)
    add_model_arg(p)
    p.set_defaults(func=evaluate_command)


def evaluate_command(a: argparse.Namespace) -> int:
    """Evaluate the model in --dtype and --kv-dtype and, unless both are float32, the float32 model (float32 weights
    and KV cache) beside it."""
    from ..runtime.llm import LLM
    from ..tools.evaluate import evaluate

    try:
        text = Path(a.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GraphLLMError(f"cannot read --text {a.text}: {e}") from None
    kwargs = dict(custom=a.custom, executor=a.executor, max_context=a.window + 1, max_seqs=a.chunk,
                  threads=a.threads, show_progress=sys.stderr.isatty())
    llm = LLM.load(a.model, dtype=a.dtype, kv_dtype=a.kv_dtype, **kwargs)
    exact = a.dtype == "float32" and llm.kv_dtype == "float32"
    ref = None if exact else LLM.load(a.model, dtype="float32", kv_dtype="float32", **kwargs)
    r = evaluate(llm, text, ref, window=a.window, chunk=a.chunk, max_tokens=a.max_tokens)
    print(f"tokens          {r.tokens}")
    print(f"perplexity      {r.perplexity:.4f}  (--dtype {a.dtype or 'as stored'}, --kv-dtype {llm.kv_dtype})")
    if r.mean_kl is not None:
        print(f"float32 ppl     {r.reference_perplexity:.4f}")
        print(f"mean KL         {r.mean_kl:.6f} nats/token vs float32")
    return 0
