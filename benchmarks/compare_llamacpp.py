"""graphllm vs llama.cpp on the same GGUF file and thread count, measured in the same run.

llama.cpp runs through llama-cpp-python installed in its OWN virtual environment (never in
graphllm's): `python -m venv ~/llamacpp && ~/llamacpp/bin/pip install llama-cpp-python` (builds
from source, 15-20 minutes on 2 cores). Rounds alternate between the engines so machine noise
hits both alike; the medians are reported with their ratio. Usage:
    python benchmarks/compare_llamacpp.py --llama-python ~/llamacpp/bin/python [-m MODEL.gguf]
        [--dtype float32] [--threads 2] [--prompt-tokens 128] [--gen-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from graphllm.tools.bench import run_bench
from graphllm.io.download import default_model_path
from graphllm.runtime.llm import LLM

LLAMA_SCRIPT = r"""
import json, sys, time
import numpy as np
from llama_cpp import Llama
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_prompt + n_gen + 8,
            n_batch=n_prompt + n_gen + 8, verbose=False)
prompt = np.random.default_rng(0).integers(3, 49000, n_prompt).tolist()
llm.reset()
t0 = time.perf_counter(); llm.eval(prompt); t_prefill = time.perf_counter() - t0
token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t0 = time.perf_counter()
for _ in range(n_gen):
    llm.eval([token]); token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t_decode = time.perf_counter() - t0
print(json.dumps({"prefill_tok_s": n_prompt / t_prefill, "decode_tok_s": n_gen / t_decode}))
"""


def llama_round(python: str, path: str, threads: int, n_prompt: int, n_gen: int) -> dict:
    """One llama.cpp measurement in a subprocess of its own environment."""
    out = subprocess.run([python, "-c", LLAMA_SCRIPT, path, str(threads), str(n_prompt), str(n_gen)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        sys.exit(f"llama.cpp run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", required=True, help="python of the venv with llama-cpp-python")
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--dtype", default=None, help="graphllm --dtype (default: the GGUF's blocks as stored)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    path = a.model or str(default_model_path())
    llm = LLM.load(path, dtype=a.dtype, threads=a.threads, max_context=a.prompt_tokens + a.gen_tokens + 1)
    ours, theirs = [], []
    for _ in range(a.rounds):
        ours.append(run_bench(llm, a.prompt_tokens, a.gen_tokens, repeat=1))
        theirs.append(llama_round(a.llama_python, path, a.threads, a.prompt_tokens, a.gen_tokens))
    rows = {}
    for key in ("prefill_tok_s", "decode_tok_s"):
        g = statistics.median(r[key] for r in ours)
        lc = statistics.median(r[key] for r in theirs)
        rows[key] = {"graphllm": round(g, 1), "llama.cpp": round(lc, 1), "ratio": round(g / lc, 2)}
    print(f"{path} ({llm.model.file_type}, graphllm --dtype {a.dtype or 'as stored'}), {a.threads} threads, "
          f"pp{a.prompt_tokens} / tg{a.gen_tokens}, median of {a.rounds} alternating rounds")
    for key, r in rows.items():
        print(f"  {key:14s} graphllm {r['graphllm']:8.1f}   llama.cpp {r['llama.cpp']:8.1f}   ratio {r['ratio']:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
