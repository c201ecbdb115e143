"""Batched decode with a JSON-schema grammar on every sequence vs none, and the cost of compiling a schema.

    python benchmarks/grammar_bench.py [-m MODEL] [--batch 8] [--tokens 64] [--rounds 5] [--executor tvm]
                                       [--temperature 0]

Each round runs ``--batch`` sequences together through the engine (the compiled executor by default),
once unconstrained and once each constrained by a schema that cannot end before ``--tokens`` (an array
with that many items at least), alternating; sampling is the same: greedy by default, which isolates the
grammar's cost (sampling at a temperature sorts the whole vocabulary per token, faster when most of it is
masked to -inf, which would flatter the grammar), or ``--temperature`` T, seeded. The clock
starts once every sequence has its first token, so prefill is left out. Medians at the end, then the time to
build llguidance's tokenizer (once per model), to compile a new schema cold (with its first mask) and cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from graphllm.runtime import grammar
from graphllm.runtime.grammar import GrammarSpec
from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

PROMPT = "List the members of the team as JSON:"


def schema(items: int, tag: str = "") -> GrammarSpec:
    """An array of at least ``items`` small objects (``tag`` makes a new, uncached spec)."""
    return GrammarSpec("json_schema", json.dumps({
        "type": "array", "minItems": items, "description": tag,
        "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                   "age": {"type": "integer", "minimum": 0, "maximum": 99},
                                                   "role": {"enum": ["lead", "dev", "qa"]}},
                  "required": ["name", "age", "role"], "additionalProperties": False}}))


def decode_rate(llm: LLM, ids: list[int], batch: int, tokens: int, spec: GrammarSpec | None,
                temperature: float = 0.0) -> float:
    """Generated tokens/s of ``batch`` sequences decoded together, after each has its first token."""
    requests = [llm.engine.submit(ids, SamplingParams(temperature=temperature, seed=s, max_tokens=tokens,
                                                      ignore_eos=True, grammar=spec)) for s in range(batch)]
    readers = [iter(r) for r in requests]
    for reader in readers:
        next(reader)
    start = time.perf_counter()
    n = sum(chunk.token is not None for reader in readers for chunk in reader)
    return n / (time.perf_counter() - start)


def compile_times(llm: LLM, rounds: int) -> dict[str, float]:
    """Median seconds: llguidance's tokenizer for this model, a new schema's compile and first mask, a cached
    one, and one mask of a sequence halfway through the long schema."""
    tok, logits = llm.tokenizer, np.zeros(llm.tokenizer.vocab_size, np.float32)
    times: dict[str, list[float]] = {"tokenizer bridge": [], "schema cold": [], "schema cached": [], "one mask": []}
    for r in range(rounds):
        grammar._bridges.pop(tok, None)
        start = time.perf_counter()
        grammar._bridge(tok)
        times["tokenizer bridge"].append(time.perf_counter() - start)
        for name in ("schema cold", "schema cached"):
            start = time.perf_counter()
            grammar.grammar_matcher(tok, schema(4, f"round {r}")).mask(logits)
            times[name].append(time.perf_counter() - start)
        matcher = grammar.grammar_matcher(tok, schema(64))
        for token in tok.encode('[{"name":"Ann","age":31,"role":"dev"},{"name":"Bo', add_special_tokens=False):
            matcher.mask(logits)
            matcher.consume(token)
        start = time.perf_counter()
        matcher.mask(logits)
        times["one mask"].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    """Load the model with ``--batch`` slots, warm up, alternate the two ways, print rounds and medians."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=None, help="model path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--executor", default="tvm", choices=["tvm", "reference"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    a = p.parse_args()
    llm = LLM.load(a.model, max_context=512, threads=a.threads, executor=a.executor, num_slots=a.batch)
    ids = llm.tokenizer.encode(PROMPT)
    spec = schema(a.tokens)
    ways = {"unconstrained": None, "json schema": spec}
    for way in ways.values():
        decode_rate(llm, ids, a.batch, 8, way)  # warm-up: bindings, thread pools, the schema's compile
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(a.rounds):
        for name, way in ways.items():
            rates[name].append(decode_rate(llm, ids, a.batch, a.tokens, way, a.temperature))
        print(f"round {r}: " + "  ".join(f"{n} {v[-1]:7.1f} tok/s" for n, v in rates.items()), flush=True)
    free, bound = (statistics.median(v) for v in rates.values())
    print(f"median tok/s ({a.batch} sequences): unconstrained {free:.1f}  json schema {bound:.1f}  "
          f"({(free / bound - 1) * 100:+.1f} % time per token)")
    print("compile (median s): " + "  ".join(f"{n} {t * 1e3:.2f} ms" for n, t in compile_times(llm, a.rounds).items()))


if __name__ == "__main__":
    main()
