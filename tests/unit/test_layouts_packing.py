"""The block packers work through a weight in bounded chunks: the same records as one pass, and temporaries of a
few MB whatever the row length (they raised a 1.7B Q4_K_M model's load peak by ~200 MB with 4096-row chunks)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import graphllm.layouts as layouts
from graphllm.dsl.qformats import qformat, quantize


def raw_blocks(fmt: str, n: int, k: int) -> np.ndarray:
    """Raw blocks uint8 [n, K/G * block_bytes]: random bytes for the K-quants, quantized normals for the others."""
    f, rng = qformat(fmt), np.random.default_rng(n + k)
    if f.sub_blocks and f.name not in ("q5_0", "q5_1"):
        return rng.integers(0, 256, (n, k // f.group * f.block_bytes), dtype=np.uint8)
    return quantize(rng.standard_normal((n, k), dtype=np.float32), fmt)


def pack(fmt: str, raw: np.ndarray) -> np.ndarray:
    """The kernels' layout of raw blocks, by the format's packer."""
    return layouts.pack_subblocks(raw, fmt) if qformat(fmt).sub_blocks else layouts.pack_qweight(raw, fmt)


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0", "q5_0", "q4_k", "q6_k"])
def test_chunked_packing_equals_one_pass(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """Chunks of 32 rows (a partial last row block included) give the records of a single pass."""
    raw = raw_blocks(fmt, 16 * 5 + 3, 512)
    whole = pack(fmt, raw)
    monkeypatch.setattr(layouts, "_PACK_ELEMENTS", 2 * 16 * 512)
    assert layouts._chunk_rows(512) == 32
    np.testing.assert_array_equal(pack(fmt, raw), whole)


def test_packing_temporaries_stay_small_for_long_rows() -> None:
    """A down projection of a 1.7B model (Q6_K, 2048 x 8192) packs with < 16 MB beyond its packed copy."""
    raw = raw_blocks("q6_k", 2048, 8192)
    tracemalloc.start()
    try:
        packed = pack("q6_k", raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert packed.nbytes == raw.nbytes
    assert peak - packed.nbytes < 16 << 20, f"packing held {(peak - packed.nbytes) >> 20} MB of temporaries"
