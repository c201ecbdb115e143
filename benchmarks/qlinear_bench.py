"""Quantized Linear kernels on SmolLM2-135M shapes: GEMV GB/s, GEMM GFLOP/s, full-model decode step.

Run: python benchmarks/qlinear_bench.py [--threads 2] [--reps 9] [--formats q4_1,q8_0,...] [--quick]

- GEMV (T = 1): weight bytes read per second, "cold" (cycling over enough distinct copies to
  overflow the L3 cache, as in decode) and "hot" (one weight, repeated); numpy float32 x @ W.T
  on the same shapes for comparison (cold).
- GEMM (T = 128): GFLOP/s (2*T*N*K per call) vs numpy float32.
- Decode step: the 211 matmuls of one SmolLM2 Q4_1 token (30 layers x q, k, v, o, gate, up, down
  in Q4_1, each layer its own weights, then the Q8_0 lm_head 576 -> 49152), called back to back
  through pre-bound kernels as the executor does.
Medians (and minimums) over --reps repetitions; the machine is shared, so the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

HIDDEN, INTER, KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
LAYER_SHAPES = [("q", HIDDEN, HIDDEN), ("k", HIDDEN, KV), ("v", HIDDEN, KV), ("o", HIDDEN, HIDDEN),
                ("gate", HIDDEN, INTER), ("up", HIDDEN, INTER), ("down", INTER, HIDDEN)]  # (name, K, N)
BENCH_SHAPES = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, INTER), (INTER, HIDDEN)]
LM_HEAD = (HIDDEN, VOCAB)
COLD_BYTES = 96 << 20  # distinct weight bytes cycled through per cold measurement (3x the L3)


def load_average() -> str:
    """The 1/5/15-minute load averages, for the record."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn: Callable[[], object], calls: int, reps: int) -> tuple[float, float]:
    """(median, min) seconds per call of `fn` over `reps` repetitions of `calls` calls."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times), min(times)


def quantized(fmt: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Raw blocks of a random [n, k] weight in format fmt."""
    from graphllm.dsl.qformats import quantize

    return quantize(rng.standard_normal((n, k), dtype=np.float32) * 0.05, fmt)


def main() -> None:
    """Build the kernels, then print one table per measurement."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--formats", default="q4_1,q4_0,q8_0,q4_1g64,q8_0g64")
    ap.add_argument("--quick", action="store_true", help="skip the numpy and GEMM tables")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    from graphllm.codegen.build import aligned_empty, as_tensor, bind, build_module
    from graphllm.codegen.kernels.qlinear import pack_qweight, qlinear_gemm, qlinear_gemv
    from graphllm.codegen.target import configure_threads
    from graphllm.dsl.qformats import qformat

    threads = configure_threads(args.threads)
    formats = args.formats.split(",")
    shapes = {(fmt, k, n) for fmt in formats for k, n in BENCH_SHAPES if k % qformat(fmt).group == 0}
    shapes |= {("q4_1", k, n) for _, k, n in LAYER_SHAPES} | {("q8_0", *LM_HEAD)}
    funcs = {}
    for fmt, k, n in sorted(shapes):
        funcs[f"v_{fmt}_{k}_{n}"] = qlinear_gemv(fmt, k, n)
        funcs[f"m_{fmt}_{k}_{n}"] = qlinear_gemm(fmt, k, n)
    start = time.perf_counter()
    mod = build_module(funcs).mod
    print(f"built {len(funcs)} kernels in {time.perf_counter() - start:.1f} s; threads {threads}; "
          f"load average {load_average()}")
    rng = np.random.default_rng(0)

    def aligned(a: np.ndarray) -> np.ndarray:
        out = aligned_empty(a.shape, a.dtype)
        out[...] = a
        return out

    print("\nGEMV T=1  (GB/s of weight bytes; median [min time])")
    print(f"{'format':10} {'K x N':>12} {'bytes':>9} {'cold GB/s':>10} {'hot GB/s':>9} {'cold us':>8} "
          f"{'f32 numpy cold GB/s':>20} {'speedup vs f32':>15}")
    for fmt, k, n in sorted(shapes):
        raw = quantized(fmt, n, k, rng)
        copies = max(1, COLD_BYTES // raw.nbytes)
        packed = [as_tensor(pack_qweight(raw, fmt)) for _ in range(copies)]
        x, y = aligned(rng.standard_normal((1, k), dtype=np.float32)), aligned_empty((1, n))
        fn, xt, yt = mod[f"v_{fmt}_{k}_{n}"], as_tensor(x), as_tensor(y)
        cold_med, _ = timed(lambda: [fn(xt, w, yt) for w in packed], 1, args.reps)
        cold = cold_med / copies
        hot, _ = timed(lambda: fn(xt, packed[0], yt), 200, args.reps)
        line = (f"{fmt:10} {f'{k}x{n}':>12} {raw.nbytes:>9} {raw.nbytes / cold / 1e9:>10.2f} "
                f"{raw.nbytes / hot / 1e9:>9.2f} {cold * 1e6:>8.1f}")
        if not args.quick and n * k * 4 * 4 < (1 << 30):
            wf = [rng.standard_normal((n, k), dtype=np.float32) for _ in range(max(1, COLD_BYTES // (n * k * 4)))]
            ref, _ = timed(lambda: [x @ w.T for w in wf], 1, args.reps)
            ref /= len(wf)
            line += f" {n * k * 4 / ref / 1e9:>20.2f} {ref / cold:>15.2f}"
        print(line)
        del packed

    if not args.quick:
        t = 128
        print(f"\nGEMM T={t}  (GFLOP/s, 2*T*N*K per call; median)")
        print(f"{'format':10} {'K x N':>12} {'GFLOP/s':>8} {'f32 numpy':>10}")
        for fmt, k, n in sorted(shapes):
            if (k, n) == LM_HEAD:
                continue
            raw = quantized(fmt, n, k, rng)
            w, x, y = as_tensor(pack_qweight(raw, fmt)), aligned(rng.standard_normal((t, k), dtype=np.float32)), aligned_empty((t, n))
            fn, xt, yt = mod[f"m_{fmt}_{k}_{n}"], as_tensor(x), as_tensor(y)
            sec, _ = timed(lambda: fn(xt, w, yt), 5, args.reps)
            wf = rng.standard_normal((n, k), dtype=np.float32)
            ref, _ = timed(lambda: x @ wf.T, 5, args.reps)
            flop = 2 * t * n * k
            print(f"{fmt:10} {f'{k}x{n}':>12} {flop / sec / 1e9:>8.1f} {flop / ref / 1e9:>10.1f}")

    print("\nDecode step: 211 matmuls of SmolLM2-135M Q4_1 (30 layers, own weights each) + Q8_0 lm_head, T=1")
    calls, nbytes = [], 0
    for _ in range(LAYERS):
        for _, k, n in LAYER_SHAPES:
            raw = quantized("q4_1", n, k, rng)
            nbytes += raw.nbytes
            calls.append(bind(mod[f"v_q4_1_{k}_{n}"], aligned(rng.standard_normal((1, k), dtype=np.float32)),
                              pack_qweight(raw, "q4_1"), aligned_empty((1, n))))
    raw = quantized("q8_0", VOCAB, HIDDEN, rng)
    nbytes += raw.nbytes
    head = bind(mod[f"v_q8_0_{HIDDEN}_{VOCAB}"], aligned(rng.standard_normal((1, HIDDEN), dtype=np.float32)),
                pack_qweight(raw, "q8_0"), aligned_empty((1, VOCAB)))
    del raw
    step_med, step_min = timed(lambda: ([c() for c in calls], head()), 1, args.reps)
    layers_med, _ = timed(lambda: [c() for c in calls], 1, args.reps)
    print(f"  step: median {step_med * 1e3:.2f} ms (min {step_min * 1e3:.2f}), of which the 210 layer GEMVs "
          f"{layers_med * 1e3:.2f} ms and the lm_head {(step_med - layers_med) * 1e3:.2f} ms")
    print(f"  = {1 / step_med:.0f} tok/s from the matmuls alone; {nbytes / 1e6:.1f} MB read per token at "
          f"{nbytes / step_med / 2**30:.1f} GiB/s")
    print(f"load average {load_average()}")


if __name__ == "__main__":
    main()
