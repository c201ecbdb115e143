"""graphllm vs llama.cpp on the same GGUF file and thread count, measured in the same run.

llama.cpp runs as its own `llama-bench` binary (--llama-bench; how to build it: peers.md), or through
llama-cpp-python installed in its OWN virtual environment (never in graphllm's): `python -m venv
~/llamacpp && ~/llamacpp/bin/pip install llama-cpp-python` (builds from source, 15-20 minutes on 2
cores; its `eval` loop is slower than llama-bench). Rounds alternate between the engines so machine noise
hits both alike; the medians are reported with their ratio. Usage:
    python benchmarks/compare_llamacpp.py (--llama-bench PATH/TO/llama-bench | --llama-python ~/llamacpp/bin/python)
        [-m MODEL.gguf]
        [--dtype float32] [--threads 2] [--prompt-tokens 128] [--gen-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def idle_cores(seconds: float = 1.0) -> float:
    """Cores left idle by every process over the next `seconds` (/proc/stat), to start a round on a quiet machine."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all jiffies, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return os.cpu_count() * (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(cores: float, patience: float) -> float:
    """Wait (at most `patience` seconds) until `cores` cores are idle; the idle cores last seen."""
    deadline = time.monotonic() + patience
    while (idle := idle_cores()) < cores and time.monotonic() < deadline:
        pass
    return idle


def llama_bench_round(binary: str, path: str, threads: int, n_prompt: int, n_gen: int) -> dict:
    """One llama.cpp measurement by its own llama-bench (one repetition of pp and tg; its libraries beside it)."""
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
        p for p in (str(Path(binary).resolve().parent), os.environ.get("LD_LIBRARY_PATH")) if p))
    out = subprocess.run([binary, "-m", path, "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen), "-r", "1",
                          "-o", "json"], capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:
        sys.exit(f"llama-bench failed:\n{out.stderr[-2000:]}")
    rates = {("prefill_tok_s" if r["n_prompt"] else "decode_tok_s"): r["avg_ts"] for r in json.loads(out.stdout)}
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    peer = ap.add_mutually_exclusive_group(required=True)
    peer.add_argument("--llama-python", help="python of the venv with llama-cpp-python")
    peer.add_argument("--llama-bench", help="llama.cpp's llama-bench binary (what peers.md compares against)")
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--dtype", default=None, help="graphllm --dtype (default: the GGUF's blocks as stored)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quiet", type=float, default=0.9,
                    help="start a round once this share of --threads cores is idle (other processes' load)")
    ap.add_argument("--patience", type=float, default=120, help="seconds to wait for that before a round at most")
    a = ap.parse_args()
    path = a.model or str(default_model_path())
    llm = LLM.load(path, dtype=a.dtype, threads=a.threads, max_context=a.prompt_tokens + a.gen_tokens + 1)
    ours, theirs = [], []
    for i in range(a.rounds):
        idle = wait_quiet(a.quiet * a.threads, a.patience)
        ours.append(run_bench(llm, a.prompt_tokens, a.gen_tokens, repeat=1))
        peer = llama_bench_round if a.llama_bench else llama_round
        theirs.append(peer(a.llama_bench or a.llama_python, path, a.threads, a.prompt_tokens, a.gen_tokens))
        print(f"round {i + 1}: prefill / decode tok/s graphllm {ours[-1]['prefill_tok_s']:.1f} / "
              f"{ours[-1]['decode_tok_s']:.1f}, llama.cpp {theirs[-1]['prefill_tok_s']:.1f} / "
              f"{theirs[-1]['decode_tok_s']:.1f}; {idle:.1f} cores idle before, load average "
              f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}",
              flush=True)
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
