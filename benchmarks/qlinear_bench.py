"""Quantized Linear kernels on SmolLM2-135M shapes: GEMV GB/s, GEMM GFLOP/s, full-model decode step.

Run: python benchmarks/qlinear_bench.py [--threads 2] [--reps 9] [--formats q4_1,q8_0,...] [--quick]

- GEMV (T = 1): weight bytes read per second, "cold" (cycling over enough distinct copies to
  overflow the 32 MiB L3, as in decode) and "hot" (one weight, repeated). Next to it, in the same
  run: a TVM kernel that only streams the same packed bytes (what memory gives right now; the
  machine is shared, so this is the fair yardstick) and numpy float32 x @ W.T (cold).
- GEMM (T = 128): GFLOP/s (2*T*N*K per call) vs numpy float32.
- Decode step: the 211 matmuls of one SmolLM2 Q4_1 token (30 layers x q, k, v, o, gate, up, down,
  each layer with its own weights, then the Q8_0 lm_head 576 -> 49152), called back to back through
  pre-bound kernels as the executor does; also the 181 that run after fuse_swiglu (gate+up merged).
Medians (and minimums) over --reps repetitions, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HIDDEN, INTER, KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
LAYER = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN),
         (HIDDEN, INTER), (HIDDEN, INTER), (INTER, HIDDEN)]  # (K, N) of q, k, v, o, gate, up, down
LAYER_FUSED = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN), (HIDDEN, 2 * INTER), (INTER, HIDDEN)]
BENCH_SHAPES = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, INTER), (INTER, HIDDEN)]
LM_HEAD = (HIDDEN, VOCAB)
COLD_BYTES = 96 << 20  # distinct weight bytes cycled through per cold measurement (3x the L3)
GEMM_T = 128


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


def aligned(a: np.ndarray) -> np.ndarray:
    """A 64-byte-aligned copy."""
    from graphllm.layouts import aligned_empty

    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def stream_func(rows: int, words: int) -> Any:
    """A TVM kernel that only reads uint32 [rows, words] (words % 8 == 0), parallel over rows: the memory yardstick."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("stream")
            w = T.match_buffer(T.arg("w", T.handle()), (rows, words // 8, 8), "uint32")
            out = T.match_buffer(T.arg("out", T.handle()), (rows, 8), "uint32")
            with T.parallel(0, rows) as r:
                acc = T.alloc_buffer((8,), "uint32")
                with T.vectorized(0, 8) as lane:
                    T.buffer_store(acc, tirx.const(0, "uint32"), [lane])
                with T.serial(0, words // 8) as i:
                    with T.vectorized(0, 8) as lane:
                        T.buffer_store(acc, acc[lane] ^ w[r, i, lane], [lane])
                with T.vectorized(0, 8) as lane:
                    T.buffer_store(out, acc[lane], [r, lane])
    return ib.get()


def gemv_times(mod: Any, name: str, pack: Callable[[], np.ndarray], nbytes: int, k: int, n: int,
               rng: np.random.Generator, reps: int) -> tuple[float, float, float]:
    """(cold, hot, stream) seconds per T = 1 call of the module's GEMV `name` over a [n, k] weight: cycling through
    enough packed copies to miss the L3, one copy repeated, and the module's stream kernel over the same copies."""
    from graphllm.layouts import aligned_empty
    from graphllm.runtime.tvm import as_tensor

    copies = max(2, COLD_BYTES // nbytes)
    packed = [pack() for _ in range(copies)]
    nb, kb, rec = packed[0].shape
    xt, yt = as_tensor(aligned(rng.standard_normal((1, k), dtype=np.float32))), as_tensor(aligned_empty((1, n)))
    fn, wts = mod[name], [as_tensor(p) for p in packed]
    st, sts = mod[f"s_{nb}_{kb * rec}"], [as_tensor(p.reshape(nb, kb * rec // 8, 8)) for p in packed]
    st_out = as_tensor(aligned_empty((nb, 8), "uint32"))
    cold = timed(lambda: [fn(xt, w, yt) for w in wts], 1, reps)[0] / copies
    stream = timed(lambda: [st(w, st_out) for w in sts], 1, reps)[0] / copies
    hot = timed(lambda: fn(xt, wts[0], yt), 100, reps)[0]
    return cold, hot, stream


def main() -> None:
    """Build the kernels, then print one table per measurement."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--formats", default="q4_1,q4_0,q8_0,q4_1g64,q8_0g64")
    ap.add_argument("--quick", action="store_true", help="skip the numpy and GEMM tables")
    ap.add_argument("--numpy-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.numpy_only:
        print(json.dumps(numpy_times(args.reps)))
        return
    # numpy in its own process, before TVM's pool exists: each one's spinning threads slow the other
    ref = {} if args.quick else json.loads(subprocess.run(
        [sys.executable, __file__, "--numpy-only", "--reps", str(args.reps)], check=True, capture_output=True,
        text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads)}).stdout)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    from graphllm.codegen.build import build_module

    from graphllm.runtime.tvm import as_tensor
    from graphllm.codegen.kernels.cpu.qlinear import qlinear_gemm, qlinear_gemv
    from graphllm.runtime.tvm import configure_threads
    from graphllm.dsl.qformats import qformat
    from graphllm.layouts import aligned_empty, pack_qweight

    threads = configure_threads(args.threads)
    formats = args.formats.split(",")
    shapes = sorted({(fmt, k, n) for fmt in formats for k, n in BENCH_SHAPES if k % qformat(fmt).group == 0}
                    | {("q8_0", *LM_HEAD)})
    step_shapes = {("q4_1", k, n) for k, n in LAYER + LAYER_FUSED} | {("q8_0", *LM_HEAD)}
    funcs = {f"v_{f}_{k}_{n}": qlinear_gemv(f, k, n) for f, k, n in set(shapes) | step_shapes}
    funcs |= {f"m_{f}_{k}_{n}": qlinear_gemm(f, k, n) for f, k, n in shapes if (k, n) != LM_HEAD}
    packed_sizes = {pack_qweight(quantized(f, n, k, np.random.default_rng(0)), f).shape for f, k, n in shapes}
    funcs |= {f"s_{nb}_{kb * rec}": stream_func(nb, kb * rec) for nb, kb, rec in packed_sizes}
    start = time.perf_counter()
    mod = build_module(funcs).mod
    print(f"built {len(funcs)} kernels in {time.perf_counter() - start:.1f} s; threads {threads}; "
          f"load average {load_average()}")
    rng = np.random.default_rng(0)

    gemv: dict[tuple[str, int, int], tuple[int, float, float, float]] = {}
    for fmt, k, n in shapes:
        raw = quantized(fmt, n, k, rng)
        cold, hot, stream = gemv_times(mod, f"v_{fmt}_{k}_{n}", lambda: pack_qweight(raw, fmt), raw.nbytes, k, n, rng,
                                       args.reps)
        gemv[fmt, k, n] = (raw.nbytes, cold, hot, stream)
    gemm: dict[tuple[str, int, int], float] = {}
    if not args.quick:
        for fmt, k, n in shapes:
            if (k, n) != LM_HEAD:
                w = as_tensor(pack_qweight(quantized(fmt, n, k, rng), fmt))
                x = aligned(rng.standard_normal((GEMM_T, k), dtype=np.float32))
                fn, xt, yt = mod[f"m_{fmt}_{k}_{n}"], as_tensor(x), as_tensor(aligned_empty((GEMM_T, n)))
                gemm[fmt, k, n] = timed(lambda: fn(xt, w, yt), 5, args.reps)[0]
    step_lines = decode_steps(mod, rng, args.reps)

    print("\nGEMV T=1: GB/s of weight bytes (median of reps); stream = a TVM kernel only reading the same "
          "packed bytes, same run; numpy = float32 x @ W.T, cold, measured first in its own process")
    print(f"{'format':9} {'K x N':>10} {'bytes':>9} {'cold':>6} {'hot':>6} {'stream':>7} {'cold/stream':>11} "
          f"{'cold us':>8} {'numpy f32':>9} {'vs numpy':>8}")
    for (fmt, k, n), (nbytes, cold, hot, stream) in gemv.items():
        line = (f"{fmt:9} {f'{k}x{n}':>10} {nbytes:>9} {nbytes / cold / 1e9:>6.2f} {nbytes / hot / 1e9:>6.2f} "
                f"{nbytes / stream / 1e9:>7.2f} {stream / cold:>10.0%} {cold * 1e6:>8.1f}")
        if ref:
            sec = ref["gemv"][f"{k}x{n}"]
            line += f" {n * k * 4 / sec / 1e9:>9.2f} {sec / cold:>7.1f}x"
        print(line)
    if gemm:
        print(f"\nGEMM T={GEMM_T}: GFLOP/s (2*T*N*K per call; median)")
        print(f"{'format':9} {'K x N':>10} {'GFLOP/s':>8} {'numpy f32':>10}")
        for (fmt, k, n), sec in gemm.items():
            flop = 2 * GEMM_T * n * k
            print(f"{fmt:9} {f'{k}x{n}':>10} {flop / sec / 1e9:>8.1f} {flop / ref['gemm'][f'{k}x{n}'] / 1e9:>10.1f}")
    print("\nDecode step of SmolLM2-135M Q4_1 (T=1, every layer its own weights, Q8_0 lm_head 576 -> 49152)")
    print("\n".join(step_lines))
    print(f"load average {load_average()}")


def numpy_times(reps: int) -> dict[str, dict[str, float]]:
    """Seconds per float32 numpy GEMV (cold, T=1) and GEMM (T=GEMM_T) on every benchmarked shape."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {"gemv": {}, "gemm": {}}
    for k, n in [*BENCH_SHAPES, LM_HEAD]:
        x = rng.standard_normal((1, k), dtype=np.float32)
        wf = [rng.standard_normal((n, k), dtype=np.float32) for _ in range(max(2, COLD_BYTES // (n * k * 4)))]
        out["gemv"][f"{k}x{n}"] = timed(lambda: [x @ w.T for w in wf], 1, reps)[0] / len(wf)
        xt = rng.standard_normal((GEMM_T, k), dtype=np.float32)
        out["gemm"][f"{k}x{n}"] = timed(lambda: xt @ wf[0].T, 5, reps)[0]
    return out


def decode_steps(mod: Any, rng: np.random.Generator, reps: int) -> list[str]:
    """Time the matmuls of one decode step, unfused (211) and as graphllm runs them (181); one line each."""
    from graphllm.runtime.tvm import bind
    from graphllm.layouts import aligned_empty, pack_qweight

    head_raw = quantized("q8_0", VOCAB, HIDDEN, rng)
    head = bind(mod[f"v_q8_0_{HIDDEN}_{VOCAB}"], aligned(rng.standard_normal((1, HIDDEN), dtype=np.float32)),
                pack_qweight(head_raw, "q8_0"), aligned_empty((1, VOCAB)))
    lines = []
    for label, layer in (("211 matmuls (q, k, v, o, gate, up, down)", LAYER),
                         ("181 matmuls (gate+up fused, as graphllm runs)", LAYER_FUSED)):
        calls, nbytes = [], head_raw.nbytes
        for _ in range(LAYERS):
            for k, n in layer:
                raw = quantized("q4_1", n, k, rng)
                nbytes += raw.nbytes
                calls.append(bind(mod[f"v_q4_1_{k}_{n}"], aligned(rng.standard_normal((1, k), dtype=np.float32)),
                                  pack_qweight(raw, "q4_1"), aligned_empty((1, n))))
        med, low = timed(lambda: ([c() for c in calls], head()), 1, reps)
        lines.append(f"  {label}: median {med * 1e3:.2f} ms (min {low * 1e3:.2f}) = {1 / med:.0f} tok/s from the "
                     f"matmuls alone; {nbytes / 1e6:.1f} MB at {nbytes / med / 2**30:.1f} GiB/s")
        del calls
    return lines

if __name__ == "__main__":
    main()
