"""float16 vs float32 KV cache: `graphllm bench`'s measurement alternated (f16, f32, f16, ...) in one process.

Run: python benchmarks/kv_dtype_ab.py [-m MODEL] [--rounds 9] [--prompt-tokens 128] [--gen-tokens 128] [-t 2]

Both models are loaded once (their builds from the build cache; the first run compiles them), then each round
runs tools.bench.run_bench once per dtype, back to back, so a change in the machine's load hits both alike.
Prints each round, the medians per dtype and the median of the rounds' f16/f32 ratios, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics

DTYPES = ("float16", "float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    from graphllm.runtime.llm import LLM
    from graphllm.tools.bench import run_bench

    context = a.prompt_tokens + a.gen_tokens + 1
    llms = {d: LLM.load(a.model, kv_dtype=d, threads=a.threads, max_context=context) for d in DTYPES}
    runs: dict[str, list[dict]] = {d: [] for d in DTYPES}
    for i in range(a.rounds):
        for dtype, llm in llms.items():
            r = run_bench(llm, a.prompt_tokens, a.gen_tokens, repeat=1, seed=i)
            runs[dtype].append(r)
            print(f"round {i} {dtype}: prefill {r['prefill_tok_s']:7.1f} tok/s  decode {r['decode_tok_s']:6.1f} tok/s  "
                  f"KV {r['kv_cache_mb']:.1f} MB  load {os.getloadavg()[0]:.2f}", flush=True)
    for dtype, rs in runs.items():
        print(f"median {dtype}: prefill {statistics.median(r['prefill_tok_s'] for r in rs):7.1f} tok/s  "
              f"decode {statistics.median(r['decode_tok_s'] for r in rs):6.1f} tok/s  "
              f"(prompt {a.prompt_tokens}, {a.gen_tokens} decodes, {a.threads} threads, {a.rounds} rounds)")
    for what in ("prefill_tok_s", "decode_tok_s"):
        ratios = [f16[what] / f32[what] for f16, f32 in zip(*runs.values())]
        print(f"f16 / f32 {what}: median of the rounds' ratios {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
