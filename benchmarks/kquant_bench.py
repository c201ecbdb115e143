"""Sub-block format kernels (q5_0, q5_1, q4_k, q5_k, q6_k) on SmolLM2 shapes: GEMV GB/s and GEMM GFLOP/s.

Run: python benchmarks/kquant_bench.py [--threads 2] [--reps 9] [--formats q5_0,q4_k,...]

Same method as qlinear_bench.py (whose helpers it uses): GEMV at T = 1 "cold" (cycling through more
distinct packed copies than the L3 holds, as decode does) and "hot" (one copy), in GB/s of the file's
block bytes, next to a TVM kernel that only streams the same packed bytes in the same run; GEMM at
T = 128 in GFLOP/s. K-quants only get the shapes whose K is a multiple of 256 (the down projection).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from qlinear_bench import GEMM_T, aligned, gemv_times, load_average, stream_func, timed

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (K, N)


def main() -> None:
    """Build the kernels, then print one line per (format, shape)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--formats", default="q5_0,q5_1,q4_k,q5_k,q6_k,q4_1")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

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
    cases = [(f, k, n) for f in args.formats.split(",") for k, n in SHAPES
             if k % qformat(f).group == 0 and (n != 49152 or f in ("q5_0", "q4_1"))]
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
