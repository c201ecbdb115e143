"""Decode/prefill tokens/s of graphllm (TVM and the numpy reference) vs Hugging Face transformers.

Same machine, same run, same weights (the GGUF's blocks dequantized to float32 for every engine).
Needs torch + transformers for the transformers row (`pip install torch transformers accelerate`);
without them that row is skipped with a note. Usage:
    python benchmarks/compare_transformers.py [-m MODEL.gguf] [--threads 2] [--prompt-tokens 128] [--gen-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from graphllm.tools.bench import run_bench
from graphllm.io.download import default_model_path
from graphllm.runtime.llm import LLM


def bench_transformers(path: str, threads: int, prompt_tokens: int, gen_tokens: int) -> dict | None:
    """Greedy prefill + decode with transformers on the same GGUF, float32, eager attention."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"note: transformers row skipped ({e})")
        return None
    from pathlib import Path

    torch.set_num_threads(threads)
    p = Path(path)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([np.random.default_rng(0).integers(3, 49152, prompt_tokens).tolist()])
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(ids, use_cache=True)
        t_prefill = time.perf_counter() - t0
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(gen_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t_decode = time.perf_counter() - t0
    return {"engine": "transformers (torch CPU)", "prefill_tok_s": prompt_tokens / t_prefill,
            "decode_tok_s": gen_tokens / t_decode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=32)
    a = ap.parse_args()
    path = a.model or str(default_model_path())
    rows = []
    for executor in ("tvm", "reference"):
        llm = LLM.load(path, executor=executor, dtype="float32", threads=a.threads,
                       max_context=a.prompt_tokens + a.gen_tokens + 1)
        r = run_bench(llm, a.prompt_tokens, a.gen_tokens, repeat=1 if executor == "reference" else 3)
        rows.append({"engine": f"graphllm {executor}", "prefill_tok_s": r["prefill_tok_s"],
                     "decode_tok_s": r["decode_tok_s"]})
        del llm
    hf = bench_transformers(path, a.threads, a.prompt_tokens, a.gen_tokens)
    if hf:
        rows.append(hf)
    print(f"{'engine':28s} {'prefill tok/s':>14s} {'decode tok/s':>13s}")
    for r in rows:
        print(f"{r['engine']:28s} {r['prefill_tok_s']:14.1f} {r['decode_tok_s']:13.1f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
