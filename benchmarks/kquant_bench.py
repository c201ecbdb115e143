"""Sub-block format kernels (q5_0, q5_1, q4_k, q5_k, q6_k): GEMV GB/s and GEMM GFLOP/s, alone or inside a model.

Run: python benchmarks/kquant_bench.py [--threads 2] [--reps 9] [--formats q5_0,q4_k,...] [--shapes smollm2|1.7b]
     python benchmarks/kquant_bench.py -m MODEL.gguf [--tokens 1,128] [--threads 2] [--reps 9]

Same method as qlinear_bench.py (whose helpers it uses): GEMV at T = 1 "cold" (cycling through more
distinct packed copies than the L3 holds, as decode does) and "hot" (one copy), in GB/s of the file's
block bytes, next to a TVM kernel that only streams the same packed bytes in the same run; GEMM at
T = 128 in GFLOP/s. K-quants only get the shapes whose K is a multiple of 256 (on SmolLM2-135M only the down
projection; every shape of the 1.7B one: q/o 2048x2048, merged q/k/v, merged gate/up, down, lm_head).
With -m, the compiled model's own step at each token count instead: every kernel call timed alone (median over
--reps steps), summed per op and weight type, with the weight bytes it streams (GB/s) or its GFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
from qlinear_bench import GEMM_T, aligned, gemv_times, load_average, stream_func, timed

SHAPES = {  # (K, N)
    "smollm2": [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)],
    "1.7b": [(2048, 2048), (2048, 6144), (2048, 16384), (8192, 2048), (2048, 49152)],
}
LM_HEAD_N = 49152  # the vocabulary: its lm_head is benchmarked in the formats llama.cpp stores it in
LM_HEAD_FORMATS = ("q5_0", "q4_1", "q6_k")


def weight_label(executor: Any, step: Any) -> str:
    """The type of the weight a step streams (e.g. q4_k[6144,2048]), '' for a step without one."""
    from graphllm.plan import PackedWeightValue

    for v in step.value_ids():
        value = executor.plan.values[v]
        if v in executor.weights:
            return str(executor.plan.values[value.source].type if isinstance(value, PackedWeightValue) else value.type)
    return ""


def step_flops(executor: Any, step: Any, label: str, tokens: int) -> int:
    """2 * rows * N * K of a step with an [N, K] weight (rows: its input's, e.g. one per sequence for the lm_head)."""
    from graphllm.plan import ValueArg

    if not label or not isinstance(step.args[0], ValueArg):
        return 0
    n, k = (int(d) for d in label[label.index("[") + 1:-1].split(","))
    return 2 * executor._array(step.args[0].value, tokens, 1).shape[0] * n * k


def profile_model(path: str, threads: int, tokens: list[int], reps: int) -> None:
    """Per op and weight type: time per step of the compiled model (each call timed alone), GB/s or GFLOP/s."""
    from graphllm.plan import HostStep
    from graphllm.runtime.llm import LLM

    ex = LLM.load(path, threads=threads, max_context=max(tokens) + 1).executor
    print(f"{path}: {ex.threads} threads, load average {load_average()}")
    for t in tokens:
        ex.run(np.arange(1, t + 1), np.arange(t), [t], [0])
        calls = ex.ffi_calls(t, 1)
        times = np.empty((reps, len(calls)))
        for r in range(reps):
            for i, (fn, args) in enumerate(calls):
                start = time.perf_counter()
                fn(*args)
                times[r, i] = time.perf_counter() - start
        per_call = np.median(times, axis=0)
        groups: dict[tuple[str, str], list[float]] = {}
        for step, sec in zip(ex.steps, per_call):
            label = "" if isinstance(step, HostStep) else weight_label(ex, step)
            g = groups.setdefault((step.op, label), [0.0, 0, 0, 0])
            g[0] += sec
            g[1] += 1
            g[2] += sum(ex.weights[v].nbytes for v in step.value_ids() if v in ex.weights)
            g[3] += step_flops(ex, step, label, t)
        total = per_call.sum()
        print(f"T = {t}: step {total * 1e3:.1f} ms (sum of calls timed alone), {len(calls)} calls; "
              f"load average {load_average()}")
        print(f"  {'op':16} {'weight':22} {'calls':>5} {'ms/step':>8} {'share':>6} {'GB/s':>6} {'GFLOP/s':>8}")
        for (op, label), (sec, count, nbytes, flops) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
            print(f"  {op:16} {label:22} {count:>5} {sec * 1e3:>8.2f} {sec / total:>6.1%} "
                  f"{nbytes / sec / 1e9 if nbytes else 0:>6.1f} {flops / sec / 1e9:>8.1f}")


def main() -> None:
    """Build the kernels, then print one line per (format, shape)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--formats", default="q5_0,q5_1,q4_k,q5_k,q6_k,q4_1")
    ap.add_argument("--shapes", choices=list(SHAPES), default="smollm2", help="(K, N) of the kernels benchmarked alone")
    ap.add_argument("-m", "--model", help="profile this GGUF's compiled decode / prefill steps instead")
    ap.add_argument("--tokens", default="1,128", help="token counts of the model steps profiled (with -m)")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if args.model:
        profile_model(args.model, args.threads, [int(t) for t in args.tokens.split(",")], args.reps)
        return

    from graphllm.codegen.build import build_module
    from graphllm.codegen.kernels.cpu.kquant import kquant_gemm, kquant_gemv
    from graphllm.codegen.kernels.cpu.qlinear import qlinear_gemm, qlinear_gemv
    from graphllm.dsl.qformats import qformat, quantize
    from graphllm.layouts import aligned_empty, pack_qweight, pack_subblocks
    from graphllm.runtime.tvm import as_tensor, configure_threads

    def blocks(fmt: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """Raw blocks: quantized random weights (random codes under fp16 heads of 1e-4 for the K-quants)."""
        f = qformat(fmt)
        if f.kind in ("q4_k", "q5_k", "q6_k"):
            raw = rng.integers(0, 256, (n * k // f.group, f.block_bytes), dtype=np.uint8)
            at = f.block_bytes - 2 if fmt == "q6_k" else 0
            raw[:, at:at + 2 * f.sub_blocks.heads] = np.full((1, f.sub_blocks.heads), 1e-4, np.float16).view(np.uint8)
            return raw.reshape(n, -1)
        return quantize(rng.standard_normal((n, k), dtype=np.float32) * 0.05, fmt)

    def pack(fmt: str, raw: np.ndarray) -> np.ndarray:
        """The kernels' layout of raw blocks."""
        return pack_subblocks(raw, fmt) if qformat(fmt).sub_blocks else pack_qweight(raw, fmt)

    threads = configure_threads(args.threads)
    cases = [(f, k, n) for f in args.formats.split(",") for k, n in SHAPES[args.shapes]
             if k % qformat(f).group == 0 and (n != LM_HEAD_N or f in LM_HEAD_FORMATS)]
    funcs = {}
    for f, k, n in cases:
        gemv, gemm = (kquant_gemv, kquant_gemm) if qformat(f).sub_blocks else (qlinear_gemv, qlinear_gemm)
        funcs[f"v_{f}_{k}_{n}"], funcs[f"m_{f}_{k}_{n}"] = gemv(f, k, n), gemm(f, k, n)
    sizes = {pack(f, blocks(f, n, k, np.random.default_rng(0))).shape for f, k, n in cases}
    funcs |= {f"s_{nb}_{kb * rec}": stream_func(nb, kb * rec) for nb, kb, rec in sizes}
    start = time.perf_counter()
    mod = build_module(funcs).mod
    print(f"built {len(funcs)} kernels in {time.perf_counter() - start:.1f} s; threads {threads}; "
          f"load average {load_average()}")
    print(f"{'format':7} {'K x N':>10} {'bytes':>9} {'cold GB/s':>9} {'hot':>6} {'stream':>7} {'cold/stream':>11} "
          f"{'cold us':>8} {'GEMM GFLOP/s':>12}")
    rng = np.random.default_rng(0)
    for fmt, k, n in cases:
        raw = blocks(fmt, n, k, rng)
        cold, hot, stream = gemv_times(mod, f"v_{fmt}_{k}_{n}", lambda: pack(fmt, raw), raw.nbytes, k, n, rng, args.reps)
        w = as_tensor(pack(fmt, raw))
        xm = as_tensor(aligned(rng.standard_normal((GEMM_T, k), dtype=np.float32)))
        ym = as_tensor(aligned_empty((GEMM_T, n)))
        gemm = timed(lambda: mod[f"m_{fmt}_{k}_{n}"](xm, w, ym), 3, args.reps)[0]
        print(f"{fmt:7} {f'{k}x{n}':>10} {raw.nbytes:>9} {raw.nbytes / cold / 1e9:>9.2f} {raw.nbytes / hot / 1e9:>6.2f} "
              f"{raw.nbytes / stream / 1e9:>7.2f} {stream / cold:>10.0%} {cold * 1e6:>8.1f} "
              f"{2 * GEMM_T * n * k / gemm / 1e9:>12.1f}", flush=True)
    print(f"load average {load_average()}")


if __name__ == "__main__":
    main()
