"""Where a run's peak RSS comes from: VmRSS / VmHWM (and anonymous vs file-backed pages) after each load stage.

Run: python benchmarks/load_memory.py -m MODEL.gguf [--prompt-tokens 128] [--gen-tokens 128] [--threads 2]
         [--kv-dtype f16|f32] [--llama-bench PATH/TO/llama-bench]

Stages: Python + imports, the model loaded as `graphllm bench` loads it (LLM.load: a warm start, from the record
a first start, run here in a child process, left in GRAPHLLM_HOME/starts: runtime/starts.py), one prefill, the
decodes; then the largest mappings. VmHWM is the process's peak RSS, the figure `graphllm bench` reports
(ru_maxrss).
With --llama-bench, llama.cpp's bench runs on the same file, prompt, generation and threads as a child process
(before graphllm loads), and its peak RSS (ru_maxrss of the children, i.e. its VmHWM, counting its
memory-mapped weights as graphllm's count its packed ones) is printed beside.
"""

from __future__ import annotations

import argparse
import collections
import resource
import subprocess
import sys
from pathlib import Path

MIB = 1024  # kB per MiB in /proc (every figure here is in MiB, as ru_maxrss / 1024)


def status() -> dict[str, float]:
    """This process's VmRSS, VmHWM, RssAnon and RssFile in MiB."""
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    lines = Path("/proc/self/status").read_text().splitlines()
    return {k: int(line.split()[1]) / MIB for line in lines for k in keys if line.startswith(k + ":")}


def show(stage: str) -> None:
    """One line of the stage table."""
    s = status()
    print(f"{stage:34} {s['VmRSS']:8.1f} {s['VmHWM']:8.1f} {s['RssAnon']:8.1f} {s['RssFile']:8.1f}", flush=True)


def largest_mappings(count: int = 8) -> list[tuple[float, str]]:
    """The `count` mappings (by file, or [anon] / [heap]) holding the most resident MiB."""
    rss: collections.Counter[str] = collections.Counter()
    where = "[anon]"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            where = head[5] if len(head) > 5 else "[anon]"
        elif head and head[0] == "Rss:":
            rss[where] += int(head[1])
    return [(kb / MIB, name) for name, kb in rss.most_common(count)]


def llama_peak(binary: str, model: str, prompt: int, gen: int, threads: int) -> float:
    """llama-bench's peak RSS in MiB on the same file and sizes (one repetition)."""
    subprocess.run([binary, "-m", model, "-p", str(prompt), "-n", str(gen), "-t", str(threads), "-r", "1"],
                   check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / MIB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-dtype", default=None, help="the KV cache's element type, f16 or f32 (default: graphllm's)")
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench binary, for its peak RSS on the same file")
    a = ap.parse_args()
    context = a.prompt_tokens + a.gen_tokens + 1
    # first, while this process is small: a child's ru_maxrss counts the pages it shared with its parent at fork
    llama = a.llama_bench and llama_peak(a.llama_bench, a.model, a.prompt_tokens, a.gen_tokens, a.threads)
    print(f"{'stage':34} {'RSS MiB':>8} {'peak MiB':>8} {'anon MiB':>8} {'file MiB':>8}")
    subprocess.run([sys.executable, "-c", "import sys; from graphllm.runtime.llm import LLM; LLM.load(sys.argv[1], "
                    "max_context=int(sys.argv[2]), threads=int(sys.argv[3]), kv_dtype=sys.argv[4] or None)",
                    a.model, str(context), str(a.threads), a.kv_dtype or ""], check=True)  # the first start: this one is warm
    show("Python")
    import numpy as np

    from graphllm.runtime.llm import LLM

    show("imports")
    llm = LLM.load(a.model, max_context=context, threads=a.threads, kv_dtype=a.kv_dtype, tokenizer=False)
    executor = llm.executor
    show("model loaded (a warm start)")
    logits = executor.run(np.arange(1, a.prompt_tokens + 1), np.arange(a.prompt_tokens), [a.prompt_tokens], [0])
    show(f"prefill of {a.prompt_tokens}")
    for i in range(a.gen_tokens):
        logits = executor.run([int(logits[0].argmax())], [a.prompt_tokens + i], [1], [0])
    show(f"{a.gen_tokens} decodes")
    for mb, name in largest_mappings():
        print(f"  {mb:7.1f} MiB  {name}")
    if llama:
        peak = status()["VmHWM"]
        print(f"peak RSS: graphllm {peak:.1f} MiB, llama-bench {llama:.1f} MiB ({peak / llama - 1:+.0%})")


if __name__ == "__main__":
    main()
