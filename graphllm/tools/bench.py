"""`graphllm bench`: prefill and decode tokens/s, time to first token, memory and bandwidth share."""

from __future__ import annotations

import random
import resource
import time
from typing import Any

import numpy as np



def copy_bandwidth(nbytes: int = 256 << 20, repeat: int = 3) -> float:
    """Bytes/s of a large numpy copy (read + write counted), the machine's memory-bandwidth yardstick."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def weight_bytes(llm: Any) -> int:
    """Bytes of weights a decode step reads (every weight once)."""
    ex = llm.executor
    if hasattr(ex, "weight_bytes"):
        return int(ex.weight_bytes)
    return int(sum(a.nbytes for a in ex.weights.values()))


def run_bench(llm: Any, prompt_tokens: int = 128, gen_tokens: int = 128, repeat: int = 3,
              seed: int = 0) -> dict[str, Any]:
    """Time prefill of a random prompt and greedy decode steps; medians over ``repeat`` runs."""
    vocab = int(llm.config.get("vocab_size") or llm.tokenizer.vocab_size)
    if prompt_tokens + gen_tokens > llm.max_context:
        raise ValueError(f"prompt + generated tokens ({prompt_tokens + gen_tokens}) exceed the context "
                         f"of {llm.max_context}; lower them or raise --max-context")
    rng = random.Random(seed)  # not numpy.random: the process measured loads what a greedy run loads
    prompt = [rng.randrange(3, vocab) for _ in range(prompt_tokens)]
    prefill, decode = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        logits = llm.step(prompt, range(prompt_tokens), [prompt_tokens], [0])[0]
        prefill.append(time.perf_counter() - t0)
        token = int(np.argmax(logits))
        t0 = time.perf_counter()
        for i in range(gen_tokens):
            token = int(np.argmax(llm.decode(token, prompt_tokens + i)))
        decode.append(time.perf_counter() - t0)
    t_prefill, t_decode = float(np.median(prefill)), float(np.median(decode))
    per_token = t_decode / max(gen_tokens, 1)
    wbytes = weight_bytes(llm)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the yardstick's 512 MB of buffers
    bandwidth = copy_bandwidth()
    result = {
        "executor": type(llm.executor).__name__,
        "model": str(llm.model_path), "weights": llm.file_type,
        "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "repeat": repeat,
        "prefill_tok_s": prompt_tokens / t_prefill,
        "decode_tok_s": gen_tokens / t_decode if gen_tokens else None,
        "ttft_s": t_prefill + per_token,
        "peak_rss_mb": peak_rss,
        "weight_bytes_per_token": wbytes,
        "kv_dtype": llm.kv_dtype,
        "kv_cache_mb": llm.kv_bytes_per_position() * llm.max_context * llm.engine.num_slots / 2**20,
        "decode_gb_s": wbytes / per_token / 1e9,
        "copy_gb_s": bandwidth / 1e9,
        "bandwidth_share": (wbytes / per_token) / bandwidth,
    }
    if hasattr(llm.executor, "profile"):
        prof = llm.executor.profile(1, 1)
        steps = llm.executor.plan.kernel_steps
        prefill_variants = sum(1 for st in steps if llm.executor.plan.kernel_symbol(st, prompt_tokens, 1) != st.kernel)
        result.update(threads=llm.executor.threads, launches_per_decode=prof["launches"],
                      launches_per_prefill=len(steps), prefill_large_variants=prefill_variants,
                      activation_mb_planned=llm.executor.activation_bytes["planned"] / 2**20,
                      activation_mb_naive=llm.executor.activation_bytes["naive"] / 2**20,
                      in_place_updates=llm.executor.activation_bytes["in_place"],
                      chunk_tokens=llm.executor.chunk,
                      host_overhead_share=max(0.0, 1 - prof["kernels_s"] / prof["step_s"]) if prof["step_s"] else 0.0)
    return result


def format_bench(r: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        f"model           {r['model']} ({r['weights']}), executor {r['executor']}"
        + (f", {r['threads']} threads" if "threads" in r else ""),
        f"prefill         {r['prefill_tok_s']:.1f} tokens/s  ({r['prompt_tokens']} tokens)",
        f"decode          {r['decode_tok_s']:.1f} tokens/s  ({r['gen_tokens']} tokens)",
        f"first token     {r['ttft_s'] * 1000:.1f} ms",
        f"peak RSS        {r['peak_rss_mb']:.1f} MiB",
        f"KV cache        {r['kv_cache_mb']:.2f} MiB of {r['kv_dtype']}",
        f"decode traffic  {r['decode_gb_s']:.2f} GB/s of weights = {100 * r['bandwidth_share']:.0f}% "
        f"of measured copy bandwidth ({r['copy_gb_s']:.1f} GB/s)",
    ]
    if "launches_per_decode" in r:
        lines.append(f"decode step     {r['launches_per_decode']} kernel launches, "
                     f"{100 * r['host_overhead_share']:.1f}% host (Python/FFI) overhead")
        lines.append(f"prefill step    {r['launches_per_prefill']} kernel launches, {r['prefill_large_variants']} of them "
                     f"the GEMM / row-parallel variants (the decode step runs the GEMV / serial ones)")
        lines.append(f"activations     {r['activation_mb_planned']:.1f} MB planned vs {r['activation_mb_naive']:.1f} MB "
                     f"without buffer reuse, {r['in_place_updates']} in-place updates (chunks of {r['chunk_tokens']} tokens)")
    return "\n".join(lines)
