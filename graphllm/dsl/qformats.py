"""Block-quantized weight formats: the one definition of their bytes, decoding and encoding.

GGUF's Q8_0, Q4_0 and Q4_1 (32 elements a block) are kept exactly; the same block math with
another group size G is named ``q8_0g{G}`` / ``q4_0g{G}`` / ``q4_1g{G}`` (for `--dtype int4g128`).
A quantized tensor of logical shape [N, K] is stored as uint8 [N, K/G * block_bytes], rows of
blocks in order. Within a 4-bit block, byte j holds element j (low nibble) and j + G/2 (high).

GGUF's Q5_0, Q5_1 (32 elements) and the K-quants Q4_K, Q5_K, Q6_K (256-element super-blocks of 8
sub-blocks of 32, or 16 of 16 for Q6_K, each with an integer scale, and Q4_K/Q5_K an integer min)
are kept exactly too, under their lower-case names. Their bytes are read once, by `parts`: unsigned
codes u, the sub-blocks' integer scales and mins, the fp16 heads; a weight is
D * (u + lo) + M with D = d * scale (d alone without sub-scales) and M = m (q5_1), -dmin * min
(K-quants) or 0, computed in the order gguf's dequantization uses (bit-exact).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

_NAME = re.compile(r"^(q8_0|q4_0|q4_1)(?:g(\d+))?$")
_SUB_BLOCK_KINDS = ("q5_0", "q5_1", "q4_k", "q5_k", "q6_k")  # GGUF's own block sizes only


@dataclass(frozen=True)
class QFormat:
    """One block format: how many elements a block holds and how its bytes decode."""

    name: str
    kind: str
    group: int

    @property
    def block_bytes(self) -> int:
        if self.kind in SUB_BLOCKS:
            return SUB_BLOCKS[self.kind].block_bytes
        header = 4 if self.kind == "q4_1" else 2
        return header + (self.group if self.kind == "q8_0" else self.group // 2)

    @property
    def bits(self) -> int:
        if self.kind in SUB_BLOCKS:
            return SUB_BLOCKS[self.kind].bits
        return 8 if self.kind == "q8_0" else 4

    @property
    def sub_blocks(self) -> SubBlocks | None:
        """The sub-block structure of q5_0, q5_1 and the K-quants; None for q8_0/q4_0/q4_1."""
        return SUB_BLOCKS.get(self.kind)

    @property
    def spelling(self) -> str:
        """The one way the format is written: 'q4_1' for q4_1g32, 'q4_k'; other groups with a g suffix."""
        return self.kind if self.sub_blocks is not None or self.group == 32 else f"{self.kind}g{self.group}"

    def row_bytes(self, k: int) -> int:
        """Bytes of one row of k elements."""
        return k // self.group * self.block_bytes

    def decode(self, blocks: np.ndarray) -> np.ndarray:
        """uint8 [n, block_bytes] -> float32 [n, group]."""
        return _DECODE[self.kind](blocks, self.group)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """float32 [n, group] -> uint8 [n, block_bytes] (round to nearest, as llama.cpp's reference)."""
        if self.kind not in _ENCODE:
            raise NotImplementedError(f"{self.name} blocks can be read but not made here (llama.cpp quantizes them)")
        return _ENCODE[self.kind](np.asarray(values, np.float32), self.group)


Parts = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None", np.ndarray]


@dataclass(frozen=True)
class SubBlocks:
    """A format whose block holds sub-blocks: sizes, code bits, offset lo, which scales and mins, its byte reader."""

    group: int  # elements per block (GGUF's super-block for the K-quants)
    sub: int  # elements per sub-block (one scale)
    bits: int
    block_bytes: int
    lo: int  # the format's q = u + lo
    scales: str  # "": none (D = d), "uint8": 6-bit scales (K-quants), "int8": signed 8-bit scales (q6_k)
    mins: str  # "": none, "m": an fp16 min per block (q5_1), "dmin": integer mins per sub-block times fp16 dmin
    split: Callable[[np.ndarray], Parts]  # raw blocks -> (u uint8 [n, group], scales [n, nsub], mins, fp16 heads)
    heads_at: int = 0  # the byte offset of the fp16 heads in a block

    @property
    def nsub(self) -> int:
        """Sub-blocks per block."""
        return self.group // self.sub

    @property
    def heads(self) -> int:
        """fp16 fields per block: d, and m or dmin."""
        return 2 if self.mins else 1

    def parts(self, blocks: np.ndarray) -> Parts:
        """Raw blocks uint8 [n, block_bytes] -> (u [n, group], integer scales [n, nsub] or None, mins or None, fp16 heads [n, heads])."""
        return self.split(np.ascontiguousarray(blocks))


@lru_cache(maxsize=None)
def qformat(dtype: str) -> QFormat | None:
    """The format of a dtype name such as 'q4_1' or 'q4_1g128'; None for plain dtypes."""
    if dtype in _SUB_BLOCK_KINDS:
        return QFormat(dtype, dtype, SUB_BLOCKS[dtype].group)
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


def random_blocks(shape: tuple[int, int], dtype: str, rng: np.random.Generator, scale: float = 0.05) -> np.ndarray:
    """Raw blocks of a random [N, K] tensor of about ``scale``'s magnitude: normal values quantized, or (formats made
    only by llama.cpp: the K-quants) random codes, scales and mins under fp16 heads of a plausible size."""
    fmt = qformat(dtype)
    n, k = shape
    try:
        return quantize(rng.standard_normal(shape, dtype=np.float32) * scale, dtype)
    except NotImplementedError:
        pass
    sub = fmt.sub_blocks
    blocks = rng.integers(0, 256, (n * k // fmt.group, fmt.block_bytes), dtype=np.uint8)
    levels = (1 << sub.bits) * (64 if sub.scales == "uint8" else 128 if sub.scales == "int8" else 1)
    heads = np.full((blocks.shape[0], sub.heads), scale * 4 / levels, np.float16)
    blocks[:, sub.heads_at:sub.heads_at + 2 * sub.heads] = heads.view(np.uint8)
    return blocks.reshape(n, fmt.row_bytes(k))


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


def _low_high(qs: np.ndarray) -> np.ndarray:
    """uint8 [n, B] -> [n, 2B]: the low nibbles, then the high ones."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _split_q5(b: np.ndarray, heads: int) -> Parts:
    """q5_0 / q5_1: fp16 d (and m), 32 high bits (element i: bit i), 16 bytes of low nibbles."""
    h = 2 * heads
    qh = b[:, h:h + 4].copy().view(np.uint32)
    high = ((qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8)
    return _low_high(b[:, h + 4:]) | (high << np.uint8(4)), None, None, b[:, :h].copy().view(np.float16)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of 8 six-bit scales and 8 six-bit mins (Q4_K, Q5_K) -> uint8 [n, 8] each."""
    d, m, md = (s[:, 4 * i:4 * i + 4] for i in range(3))
    sc = np.concatenate([d & np.uint8(63), (md & np.uint8(15)) | ((d >> np.uint8(2)) & np.uint8(48))], axis=1)
    mn = np.concatenate([m & np.uint8(63), (md >> np.uint8(4)) | ((m >> np.uint8(2)) & np.uint8(48))], axis=1)
    return sc, mn


def _k_low(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K low nibbles: 4 chunks of 32 bytes, each the low nibbles of one sub-block, then the high ones."""
    return np.stack([qs.reshape(-1, 4, 32) & np.uint8(0x0F), qs.reshape(-1, 4, 32) >> np.uint8(4)], axis=2).reshape(-1, 256)


def _split_q4_k(b: np.ndarray) -> Parts:
    """q4_k: fp16 d, dmin, 12 bytes of scales and mins, 128 bytes of nibbles."""
    sc, mn = _k_scales(b[:, 4:16])
    return _k_low(b[:, 16:]), sc, mn, b[:, :4].copy().view(np.float16)


def _split_q5_k(b: np.ndarray) -> Parts:
    """q5_k: as q4_k with 32 bytes of high bits before the nibbles (sub-block s: bit s of byte i)."""
    sc, mn = _k_scales(b[:, 4:16])
    high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & np.uint8(1)
    return _k_low(b[:, 48:]) | (high.reshape(-1, 256) << np.uint8(4)), sc, mn, b[:, :4].copy().view(np.float16)


def _split_q6_k(b: np.ndarray) -> Parts:
    """q6_k: 128 bytes of low nibbles, 64 of 2-bit high parts, 16 int8 scales, fp16 d."""
    low = (b[:, None, :128].reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8)[None, None, :, None]) & np.uint8(15)
    high = (b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & np.uint8(3)
    u = low.reshape(-1, 256) | (high.reshape(-1, 256) << np.uint8(4))
    return u, b[:, 192:208].copy().view(np.int8), None, b[:, 208:210].copy().view(np.float16)


SUB_BLOCKS: dict[str, SubBlocks] = {
    "q5_0": SubBlocks(32, 32, 5, 22, -16, "", "", functools.partial(_split_q5, heads=1)),
    "q5_1": SubBlocks(32, 32, 5, 24, 0, "", "m", functools.partial(_split_q5, heads=2)),
    "q4_k": SubBlocks(256, 32, 4, 144, 0, "uint8", "dmin", _split_q4_k),
    "q5_k": SubBlocks(256, 32, 5, 176, 0, "uint8", "dmin", _split_q5_k),
    "q6_k": SubBlocks(256, 16, 6, 210, -32, "int8", "", _split_q6_k, heads_at=208),
}


def _decode_sub_blocks(b: np.ndarray, g: int, kind: str) -> np.ndarray:
    """D * (u + lo) + M per sub-block, in gguf's order of operations (bit-exact with gguf.quants)."""
    spec = SUB_BLOCKS[kind]
    u, sc, mn, heads = spec.parts(b)
    h = heads.astype(np.float32)
    d = h[:, :1] * sc.astype(np.float32) if sc is not None else h[:, :1]
    q = (u.astype(np.float32) + np.float32(spec.lo)).reshape(-1, spec.nsub, spec.sub)
    out = d[:, :, None] * q
    if spec.mins == "m":
        out += h[:, 1:2, None]
    elif spec.mins == "dmin":
        out -= (h[:, 1:2] * mn.astype(np.float32))[:, :, None]
    return out.reshape(-1, spec.group)


def _encode_gguf(x: np.ndarray, g: int, kind: str) -> np.ndarray:
    """Blocks made by the gguf package's reference quantizer."""
    from gguf import GGMLQuantizationType
    from gguf import quants

    return quants.quantize(x, GGMLQuantizationType[kind.upper()])


_DECODE: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "q8_0": _decode_q8_0, "q4_0": _decode_q4_0, "q4_1": _decode_q4_1,
    **{kind: functools.partial(_decode_sub_blocks, kind=kind) for kind in SUB_BLOCKS}}
_ENCODE: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "q8_0": _encode_q8_0, "q4_0": _encode_q4_0, "q4_1": _encode_q4_1,
    **{kind: functools.partial(_encode_gguf, kind=kind) for kind in ("q5_0", "q5_1")}}
