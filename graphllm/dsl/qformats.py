"""Block-quantized weight formats: the one definition of their bytes, decoding and encoding.

GGUF's Q8_0, Q4_0 and Q4_1 (32 elements a block) are kept exactly; the same block math with
another group size G is named ``q8_0g{G}`` / ``q4_0g{G}`` / ``q4_1g{G}`` (for `--dtype int4g128`).
A quantized tensor of logical shape [N, K] is stored as uint8 [N, K/G * block_bytes], rows of
blocks in order. Within a 4-bit block, byte j holds element j (low nibble) and j + G/2 (high).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

_NAME = re.compile(r"^(q8_0|q4_0|q4_1)(?:g(\d+))?$")


@dataclass(frozen=True)
class QFormat:
    """One block format: how many elements a block holds and how its bytes decode."""

    name: str
    kind: str
    group: int

    @property
    def block_bytes(self) -> int:
        header = 4 if self.kind == "q4_1" else 2
        return header + (self.group if self.kind == "q8_0" else self.group // 2)

    @property
    def bits(self) -> int:
        return 8 if self.kind == "q8_0" else 4

    def row_bytes(self, k: int) -> int:
        """Bytes of one row of k elements."""
        return k // self.group * self.block_bytes

    def decode(self, blocks: np.ndarray) -> np.ndarray:
        """uint8 [n, block_bytes] -> float32 [n, group]."""
        return _DECODE[self.kind](blocks, self.group)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """float32 [n, group] -> uint8 [n, block_bytes] (round to nearest, as llama.cpp's reference)."""
        return _ENCODE[self.kind](np.asarray(values, np.float32), self.group)


@lru_cache(maxsize=None)
def qformat(dtype: str) -> QFormat | None:
    """The format of a dtype name such as 'q4_1' or 'q4_1g128'; None for plain dtypes."""
    m = _NAME.match(dtype)
    if not m:
        return None
    group = int(m.group(2) or 32)
    if group < 2 or group % 2:
        raise ValueError(f"group size {group} of {dtype} must be even")
    return QFormat(dtype, m.group(1), group)


def dequantize(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw blocks uint8 [N, row_bytes] of a quantized [N, K] tensor -> float32 [N, K]."""
    fmt = qformat(dtype)
    blocks = np.ascontiguousarray(raw).reshape(-1, fmt.block_bytes)
    out = np.empty((blocks.shape[0], fmt.group), np.float32)
    step = 1 << 16
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = fmt.decode(blocks[i:i + step])
    return out.reshape(shape)


def quantize(w: np.ndarray, dtype: str) -> np.ndarray:
    """float32 [N, K] -> raw blocks uint8 [N, K/G * block_bytes]; K must be a multiple of the group."""
    fmt = qformat(dtype)
    n, k = w.shape
    if k % fmt.group:
        raise ValueError(f"a row of {k} elements is not a whole number of {fmt.group}-element groups ({dtype})")
    return fmt.encode(np.asarray(w, np.float32).reshape(-1, fmt.group)).reshape(n, fmt.row_bytes(k))


def _f16(col: np.ndarray) -> np.ndarray:
    return col.view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    half = qs.shape[1]
    q = np.empty((qs.shape[0], 2 * half), np.float32)
    np.bitwise_and(qs, 0x0F, out=q[:, :half], casting="unsafe")
    np.right_shift(qs, 4, out=q[:, half:], casting="unsafe")
    return q


def _decode_q8_0(b: np.ndarray, g: int) -> np.ndarray:
    return b[:, 2:].view(np.int8).astype(np.float32) * _f16(b[:, :2])


def _decode_q4_0(b: np.ndarray, g: int) -> np.ndarray:
    q = _nibbles(b[:, 2:])
    q -= 8.0
    q *= _f16(b[:, :2])
    return q


def _decode_q4_1(b: np.ndarray, g: int) -> np.ndarray:
    q = _nibbles(b[:, 4:])
    q *= _f16(b[:, :2])
    q += _f16(b[:, 2:4])
    return q


def _pack_nibbles(q: np.ndarray, g: int) -> np.ndarray:
    q = q.astype(np.uint8)
    return q[:, :g // 2] | (q[:, g // 2:] << 4)


def _header(*cols: np.ndarray) -> np.ndarray:
    return np.concatenate([c.astype(np.float16).reshape(-1, 1).view(np.uint8) for c in cols], axis=1)


def _encode_q8_0(x: np.ndarray, g: int) -> np.ndarray:
    d = np.abs(x).max(axis=1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.round(x * inv[:, None]).astype(np.int8)
    return np.concatenate([_header(d), q.view(np.uint8)], axis=1)


def _encode_q4_0(x: np.ndarray, g: int) -> np.ndarray:
    idx = np.abs(x).argmax(axis=1)
    mx = x[np.arange(x.shape[0]), idx]
    d = mx / -8.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.trunc(x * inv[:, None] + 8.5), 0, 15)
    return np.concatenate([_header(d), _pack_nibbles(q, g)], axis=1)


def _encode_q4_1(x: np.ndarray, g: int) -> np.ndarray:
    lo, hi = x.min(axis=1), x.max(axis=1)
    d = (hi - lo) / 15.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.trunc((x - lo[:, None]) * inv[:, None] + 0.5), 0, 15)
    return np.concatenate([_header(d, lo), _pack_nibbles(q, g)], axis=1)


_DECODE: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "q8_0": _decode_q8_0, "q4_0": _decode_q4_0, "q4_1": _decode_q4_1}
_ENCODE: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "q8_0": _encode_q8_0, "q4_0": _encode_q4_0, "q4_1": _encode_q4_1}
