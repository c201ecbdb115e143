"""float16 vs float32 KV cache: `graphllm bench` alternated (f16, f32, f16, ...) in one run, medians per dtype.

Run: python benchmarks/kv_dtype_ab.py [-m MODEL] [--rounds 5] [--prompt-tokens 128] [--gen-tokens 128] [-t 2]

Each round runs one `graphllm bench --json` process per dtype (builds come from the build cache: run once
beforehand so that no round compiles); prints each round's prefill and decode tokens/s and the medians, with
the machine's load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

DTYPES = ("f16", "f32")


def bench(dtype: str, a: argparse.Namespace) -> dict:
    """One `graphllm bench --json` run with --kv-dtype dtype."""
    cmd = [sys.executable, "-m", "graphllm.cli", "bench", "--json", "--kv-dtype", dtype, "-t", str(a.threads),
           "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens), "--repeat", str(a.repeat),
           *(["-m", a.model] if a.model else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    runs: dict[str, list[dict]] = {d: [] for d in DTYPES}
    for i in range(a.rounds):
        for dtype in DTYPES:
            r = bench(dtype, a)
            runs[dtype].append(r)
            print(f"round {i} {dtype}: prefill {r['prefill_tok_s']:7.1f} tok/s  decode {r['decode_tok_s']:6.1f} tok/s  "
                  f"RSS {r['peak_rss_mb']:.0f} MB  KV {r['kv_cache_mb']:.1f} MB  load {os.getloadavg()[0]:.2f}",
                  flush=True)
    for dtype, rs in runs.items():
        print(f"median {dtype}: prefill {statistics.median(r['prefill_tok_s'] for r in rs):7.1f} tok/s  "
              f"decode {statistics.median(r['decode_tok_s'] for r in rs):6.1f} tok/s  "
              f"(prompt {a.prompt_tokens}, {a.gen_tokens} decodes, {a.threads} threads, {a.rounds} rounds)")


if __name__ == "__main__":
    main()
