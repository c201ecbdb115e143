"""Linear and Embedding over block-quantized weights (dsl/qformats), decoding the blocks inside the loop.

Packed layout (`pack_qweight`, applied once at load; the record has exactly the raw blocks' bytes):
output rows in blocks of ROWS = 16; for each (row block, K block of G elements) one uint32 record:
- W = G / P code words per row (P = 32 / bits codes per word), stored [W][ROWS] (a word index
  gives 16 rows = two AVX2 vectors): slot j of word w, bits [bits*j, bits*(j+1)), holds element
  j*W + w of the block as the unsigned code u = q - lo (q: what the format decodes to with a unit
  scale, lo: its smallest code, e.g. -8 for q4_0, -128 for q8_0);
- then the ROWS fp16 scales d and (q4_1) the ROWS fp16 mins m, as stored in the blocks.
A weight is d * (u + lo) (+ m): the format's own value, computed in float32.

GEMV (T < GEMM_MIN_T; rows are the vector lanes, so nothing is reduced across lanes): one AND
isolates a slot; a slot that lies in float32 mantissa bits 0..22 then *is* the denormal float
u * 2^(p - 149) (p its bit position), and the slots above bit 22 come down with one shared shift.
So there is no integer-to-float conversion: one AND and one FMA per 8 weights, against x pre-scaled
by 2^(149 - PRODUCT_EXP - p) (exact powers of two, once per call, with the per-block sums of x).
Per block and row y += d * (sum_k u*x + lo * sum x) (+ m * sum x), in 3 partial sums per token.
GEMM (T >= GEMM_MIN_T): each thread decodes its row block's [K, 16] panel to float32 (the same
AND, then one FMA by d and the block constant), then runs 6 x 16 register tiles over all tokens.
Both accumulate float32 products of float32 activations: the result is a float32 matmul against
the exactly dequantized weights (no activation quantization), scaled by exact powers of two.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from graphllm.codegen.build import aligned_empty
from graphllm.codegen.kernels.cpu.fused_linear import PLAIN, Fusion
from graphllm.codegen.kernels.cpu.norm import inv_root_mean
from graphllm.codegen.lower import Kernel, LowerRequest, packer
from graphllm.dsl.qformats import QFormat, qformat

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

ROWS = 16  # output rows per packed row block: two AVX2 float32 vectors
GEMV_TILE = 5  # tokens per GEMV pass over the weights (16 ymm registers: 5 tokens x (sums + partial sums))
GEMM_MIN_T = 10  # token counts from this on use the GEMM: 2-thread crossover (T=9: GEMV 167 us, GEMM 201 us)
GEMM_ROWS = 6  # token rows of the GEMM register tile (6 x 16 floats = 12 ymm accumulators)
PRODUCT_EXP = 60  # the GEMV accumulates u * x * 2^-PRODUCT_EXP (see _denormal_slot), rescaled at the end
PREFETCH_BYTES = 8192  # GEMV software prefetch distance in the weight stream (measured: 7.9 -> 10 GB/s on 1 thread)
DAZ_BIT = 0x40  # x86 MXCSR "denormals are zero"
MAX_GROUP = 1024  # largest group size with a registered packer
MAX_CHAINS = 3  # partial sums per token: 3 ran 5-15% faster than 2 or 4 for q4 at T=1 (FMA latency vs spills)
_VALUES_PER_STEP = 32  # codes decoded per unrolled inner step of the GEMV
_PACK_CHUNK = 4096  # rows packed at a time (bounds the packer's temporary memory)


@dataclass(frozen=True)
class QLayout:
    """How one block format is laid out for the kernels (see the module docstring)."""

    fmt: QFormat
    lo: int

    @property
    def bits(self) -> int:
        return self.fmt.bits

    @property
    def per_word(self) -> int:
        """P: codes per 32-bit word."""
        return 32 // self.fmt.bits

    @property
    def words(self) -> int:
        """W: words per row and block."""
        return self.fmt.group // self.per_word

    @property
    def halves(self) -> int:
        """fp16 header fields per block: d, and m for formats with a min."""
        return (self.fmt.block_bytes - self.fmt.group * self.fmt.bits // 8) // 2

    @property
    def record(self) -> int:
        """uint32 words per (row block, K block) record."""
        return ROWS * self.words + ROWS * self.halves // 2

    def pack_name(self) -> str:
        """The registered packer of this format."""
        return f"qlinear:{self.fmt.name}"


@functools.lru_cache(maxsize=None)
def qlayout(dtype: str) -> QLayout:
    """The kernel layout of a block format; NotImplementedError for the group sizes not supported."""
    fmt = qformat(dtype)
    if fmt is None:
        raise NotImplementedError(f"{dtype} is not a block-quantized format")
    per_word = 32 // fmt.bits
    if fmt.group % per_word or fmt.group > MAX_GROUP:
        raise NotImplementedError(
            f"{dtype}: quantized kernels need a group size that is a multiple of {per_word} "
            f"(whole 32-bit words of {fmt.bits}-bit codes) and at most {MAX_GROUP}; got {fmt.group}")
    codes = _codes(fmt, np.repeat(np.arange(256, dtype=np.uint8)[:, None], fmt.block_bytes, axis=1))
    lo, hi = int(codes.min()), int(codes.max())
    if hi - lo >= 1 << fmt.bits:
        raise NotImplementedError(f"{dtype}: codes {lo}..{hi} do not fit {fmt.bits} bits")
    return QLayout(fmt, lo)


def _codes(fmt: QFormat, blocks: np.ndarray) -> np.ndarray:
    """The integer codes q of raw blocks [n, block_bytes]: the format's decoding with d = 1 (and m = 0)."""
    halves = (fmt.block_bytes - fmt.group * fmt.bits // 8) // 2
    probe = np.array(blocks, dtype=np.uint8, copy=True)
    probe[:, :2 * halves] = np.array([1.0] + [0.0] * (halves - 1), np.float16).view(np.uint8)
    return fmt.decode(probe)


@packer("qlinear")
def pack_qweight(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw blocks uint8 [N, K/G * block_bytes] -> the kernels' 64-byte-aligned uint32 [ceil(N/16), K/G, record]."""
    lay = qlayout(dtype)
    fmt, W, H, P = lay.fmt, lay.words, lay.halves, lay.per_word
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] % fmt.block_bytes:
        raise ValueError(f"{dtype} weight must be raw blocks uint8 [N, K/{fmt.group}*{fmt.block_bytes}], "
                         f"got {raw.dtype} {raw.shape}")
    n, kb = raw.shape[0], raw.shape[1] // fmt.block_bytes
    out = aligned_empty((-(-n // ROWS), kb, lay.record), "uint32")
    for r0 in range(0, n, _PACK_CHUNK):
        r1 = min(n, r0 + _PACK_CHUNK)
        rows, nbc = r1 - r0, -(-(r1 - r0) // ROWS)
        blocks = raw[r0:r1].reshape(rows * kb, fmt.block_bytes)
        codes = (_codes(fmt, blocks) - lay.lo).astype(np.uint32).reshape(rows, kb, P, W)
        words = np.zeros((nbc * ROWS, kb, W), np.uint32)
        for j in range(P):
            words[:rows] |= codes[:, :, j, :] << np.uint32(fmt.bits * j)
        halves = np.zeros((nbc * ROWS, kb, H), np.uint16)
        halves[:rows] = blocks[:, :2 * H].view(np.uint16).reshape(rows, kb, H)
        dst = out[r0 // ROWS:r0 // ROWS + nbc]
        dst[:, :, :ROWS * W] = words.reshape(nbc, ROWS, kb, W).transpose(0, 2, 3, 1).reshape(nbc, kb, ROWS * W)
        dst[:, :, ROWS * W:] = np.ascontiguousarray(
            halves.reshape(nbc, ROWS, kb, H).transpose(0, 2, 3, 1)).reshape(nbc, kb, H * ROWS).view(np.uint32)
    return out




# ------------------------------------------------------------------ TIR building blocks


def _c(value: float | int, dtype: str) -> Any:
    """A TIR constant."""
    from tvm import tirx

    return tirx.const(value, dtype)


def _code(word: Any, bits: int, j: int) -> Any:
    """Code slot j of a uint32 word as float32 (the unsigned code u)."""
    from tvm import tirx

    shifted = word >> _c(bits * j, "uint32") if j else word
    code = shifted if bits * (j + 1) == 32 else shifted & _c((1 << bits) - 1, "uint32")
    return tirx.Cast("float32", tirx.Cast("int32", code))


def _pow2(exponent: Any) -> Any:
    """float32 2^exponent for an int expression (an unrolled loop var folds to a constant): the exponent bits."""
    from tvm import tirx

    return tirx.reinterpret("float32", ((exponent + 127) * (1 << 23)).astype("int32"))


def _high_shift(bits: int) -> int:
    """Right shift that brings the code slots above float32 mantissa bit 22 down into the mantissa."""
    return bits * (23 // bits)


def _slot_pos(bits: int, j: int) -> int:
    """Bit position of code slot j in what the GEMV reinterprets (the word, or the word >> _high_shift)."""
    return bits * j if bits * (j + 1) <= 23 else bits * j - _high_shift(bits)


def _denormal_slot(word: Any, bits: int, j: Any, high: bool) -> Any:
    """Code slot j (an unrolled loop var) of a uint32 word as the float32 u * 2^(p - 149), p = _slot_pos.

    One AND isolates the slot (the `high` slots, above mantissa bit 22, from one right shift of the
    word that they share): with a zero exponent field the bits read as a denormal float32 that is
    exactly u * 2^(p - 149), so no integer-to-float conversion is needed (x is pre-scaled by
    2^(149 - PRODUCT_EXP - p) instead; Zen 3 multiplies denormal inputs at full speed).
    """
    from tvm import tirx

    mask, shift = _c((1 << bits) - 1, "uint32"), _high_shift(bits)
    if high:
        return tirx.reinterpret("float32", (word >> _c(shift, "uint32")) & (mask << (j * bits - shift).astype("uint32")))
    return tirx.reinterpret("float32", word & (mask << (j * bits).astype("uint32")))


@contextlib.contextmanager
def _denormal_inputs() -> Iterator[None]:
    """Emit the body with x86 MXCSR.DAZ cleared (and restored after): the GEMV's weights are denormal floats.

    DAZ (denormals are zero) is off by default, but a library built with -ffast-math can set it for
    the whole process; the check costs one stmxcsr per row block.
    """
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    if platform.machine() not in ("x86_64", "AMD64"):
        yield
        return
    csr = T.alloc_buffer((2,), "uint32")
    T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.sse.stmxcsr", tirx.address_of(csr[0])))
    daz = (csr[0] & _c(DAZ_BIT, "uint32")) != _c(0, "uint32")
    with T.If(daz):
        with T.Then():
            T.buffer_store(csr, csr[0] ^ _c(DAZ_BIT, "uint32"), [1])
            T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.sse.ldmxcsr", tirx.address_of(csr[1])))
    yield
    with T.If(daz):
        with T.Then():
            T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.sse.ldmxcsr", tirx.address_of(csr[0])))


class _Buffers:
    """The PrimFunc parameters of a quantized Linear: x [T, K], packed w (+ fp16 view), [b], [norm], [res], y [T, N]."""

    def __init__(self, lay: QLayout, k: int, n: int, bias: bool, fusion: Fusion = PLAIN) -> None:
        from tvm import tirx
        from tvm.script.ir_builder import tirx as T

        self.lay, self.k, self.n, self.fusion = lay, k, n, fusion
        self.kb = k // lay.fmt.group
        self.nb = -(-n // ROWS)
        self.t = tirx.Var("T", "int64")
        x_cols = 2 * k if fusion.prologue == "swiglu" else k
        self.x = T.match_buffer(T.arg("x", T.handle()), (self.t, x_cols), "float32")
        self.w = T.match_buffer(T.arg("w", T.handle()), (self.nb, self.kb, lay.record), "uint32")
        self.b = T.match_buffer(T.arg("b", T.handle()), (n,), "float32") if bias else None
        self.g = T.match_buffer(T.arg("g", T.handle()), (k,), "float32") if fusion.prologue == "rmsnorm" else None
        self.res = T.match_buffer(T.arg("res", T.handle()), (self.t, n), "float32") if fusion.residual else None
        self.y = T.match_buffer(T.arg("y", T.handle()), (self.t, n), "float32")
        self.wh = T.decl_buffer((self.nb, self.kb, 2 * lay.record), "float16", data=self.w.data)

    def row_stat(self, t: Any, inv: Any, slot: Any) -> None:
        """Emit what the prologue needs of row t before its values: inv[slot] = 1 / rms(x[t]) for rmsnorm."""
        from tvm.script.ir_builder import tirx as T

        if self.fusion.prologue != "rmsnorm":
            return
        k, lanes = self.k, _row_lanes(self.k)
        part = T.alloc_buffer((lanes,), "float32")
        with T.vectorized(0, lanes) as r:
            T.buffer_store(part, _c(0.0, "float32"), [r])
        with T.serial(0, k // lanes) as c:
            with T.vectorized(0, lanes) as r:
                xv = self.x[t, c * lanes + r]
                T.buffer_store(part, part[r] + xv * xv, [r])
        total = functools.reduce(lambda a, b: a + b, [part[r] for r in range(lanes)])
        T.buffer_store(inv, inv_root_mean(total, k, self.fusion.eps), [slot])

    def xval(self, t: Any, c: Any, inv: Any, slot: Any) -> Any:
        """The matmul's input at row t, column c: x after the prologue (float32, as the reference computes it)."""
        from graphllm.codegen.kernels.cpu.attention import fast_exp

        p = self.fusion.prologue
        if p == "rmsnorm":
            g = self.g[c] + _c(self.fusion.offset, "float32") if self.fusion.offset else self.g[c]
            return self.x[t, c] * inv[slot] * g
        if p == "swiglu":
            a = self.x[t, c]
            return a / (_c(1.0, "float32") + fast_exp(-a)) * self.x[t, self.k + c]
        return self.x[t, c]

    def word(self, rb: Any, kb: Any, w: Any, row: Any) -> Any:
        """Code word w of row `row` (0..15) of a record."""
        return self.w[rb, kb, w * ROWS + row]

    def half(self, rb: Any, kb: Any, field: int, row: Any) -> Any:
        """Header field (0: d, 1: m) of row `row` of a record, widened to float32."""
        from tvm import tirx

        return tirx.Cast("float32", self.wh[rb, kb, 2 * ROWS * self.lay.words + field * ROWS + row])

    def store(self, t: Any, row0: Any, lanes: int, value: Any) -> None:
        """y[t, row0 + r] = value(r) (+ b) for r < lanes, skipping rows >= N (the padded tail block)."""
        from tvm.script.ir_builder import tirx as T

        def body(r: Any) -> None:
            v = value(r)
            if self.b is not None:
                v = v + self.b[row0 + r]
            if self.res is not None:
                v = self.res[t, row0 + r] + v
            T.buffer_store(self.y, v, [t, row0 + r])

        if self.n % ROWS == 0:
            with T.vectorized(0, lanes) as r:
                body(r)
            return
        with T.If(row0 + lanes <= self.n):
            with T.Then():
                with T.vectorized(0, lanes) as r:
                    body(r)
            with T.Else():
                with T.serial(0, lanes) as r:
                    with T.If(row0 + r < self.n):
                        with T.Then():
                            body(r)


def _row_lanes(k: int) -> int:
    """Vector width of a row loop over k columns: 8 lanes, or the largest power of two dividing k."""
    return next(v for v in (8, 4, 2, 1) if k % v == 0)


def _build(name: str, make: Any) -> PrimFunc:
    """Run an IRBuilder body function inside a fresh prim_func and return the PrimFunc."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            make()
    return ib.get()


# ------------------------------------------------------------------ GEMV


def _chains(tt: int, lanes: int, steps: int) -> int:
    """Independent partial sums per token and block: as many as 16 ymm registers allow, at most MAX_CHAINS."""
    vecs = tt * lanes // 8
    return max(1, min(MAX_CHAINS, steps, (12 - vecs) // vecs))


def _gemv_lanes(tt: int) -> int:
    """Rows per vector op: 16 for one token, 8 (one ymm) when several tokens share each decoded code."""
    return ROWS if tt == 1 else 8


def _gemv_tile(bufs: _Buffers, tt: int, t0: Any) -> None:
    """Emit y[t0:t0+tt] for a static token count tt: prologue (scaled x, block sums), then rows in parallel."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    lay, k, kb_n = bufs.lay, bufs.k, bufs.kb
    G, W, P, bits = lay.fmt.group, lay.words, lay.per_word, lay.bits
    xs = T.alloc_buffer((tt, k), "float32")
    sx = T.alloc_buffer((tt, kb_n), "float32")
    if bufs.fusion.prologue != "none":  # the prologue's values first, in full-width vector loops
        xp = T.alloc_buffer((tt, k), "float32")
        inv = T.alloc_buffer((tt,), "float32")
        lanes_k = _row_lanes(k)
        with T.serial(0, tt) as t:
            bufs.row_stat(t0 + t, inv, t)
            with T.serial(0, k // lanes_k) as c:
                with T.vectorized(0, lanes_k) as r:
                    T.buffer_store(xp, bufs.xval(t0 + t, c * lanes_k + r, inv, t), [t, c * lanes_k + r])

    def x_at(t: Any, c: Any) -> Any:
        """The matmul's input (after the prologue) of tile token t at column c."""
        return xp[t, c] if bufs.fusion.prologue != "none" else bufs.x[t0 + t, c]

    with T.serial(0, tt) as t:
        with T.serial(0, kb_n) as kb:
            part = T.alloc_buffer((W,), "float32")
            for j in range(P):
                scale = 2.0 ** (149 - PRODUCT_EXP - _slot_pos(bits, j))
                with T.vectorized(0, W) as w:
                    xv = x_at(t, kb * G + j * W + w)
                    T.buffer_store(xs, xv * _c(scale, "float32"), [t, kb * G + j * W + w])
                    T.buffer_store(part, xv if j == 0 else part[w] + xv, [w])
            total = functools.reduce(lambda a, b: a + b, [part[w] for w in range(W)])
            T.buffer_store(sx, total * _c(2.0 ** -PRODUCT_EXP, "float32"), [t, kb])

    lanes = _gemv_lanes(tt)
    wflat = T.decl_buffer((bufs.nb * kb_n * lay.record,), "uint32", data=bufs.w.data)
    step_words = max(d for d in range(1, W + 1) if W % d == 0 and d * P <= max(P, _VALUES_PER_STEP))
    chains = _chains(tt, lanes, step_words * P)
    with T.parallel(0, bufs.nb) as rb, _denormal_inputs():
        with T.serial(0, ROWS // lanes) as h:
            row0 = h * lanes
            acc = T.alloc_buffer((tt, lanes), "float32")
            part = T.alloc_buffer((tt, chains, lanes), "float32")
            for t in range(tt):
                with T.vectorized(0, lanes) as r:
                    T.buffer_store(acc, _c(0.0, "float32"), [t, r])
            with T.serial(0, kb_n) as kb:
                for line in range(0, lay.record, 16):
                    ahead = (rb * kb_n + kb) * lay.record + PREFETCH_BYTES // 4 + line
                    T.evaluate(tirx.call_intrin("void", "tirx.prefetch", tirx.address_of(wflat[ahead]), 0, 3, 1))
                for t in range(tt):
                    for c in range(chains):
                        with T.vectorized(0, lanes) as r:
                            init = sx[t, kb] * _c(float(lay.lo), "float32") if c == 0 and lay.lo else _c(0.0, "float32")
                            T.buffer_store(part, init, [t, c, r])
                with T.serial(0, W // step_words) as ws:
                    with T.unroll(0, step_words) as wi:
                        w = ws * step_words + wi
                        low = 23 // bits  # slots that lie in the word's mantissa bits
                        for j_begin, j_end in ((0, low), (low, P)):
                            with T.unroll(j_begin, j_end) as j:
                                c = (wi * P + j) % chains
                                with T.vectorized(0, lanes) as r:
                                    v = _denormal_slot(bufs.word(rb, kb, w, row0 + r), bits, j, j_begin > 0)
                                    for t in range(tt):
                                        T.buffer_store(part, part[t, c, r] + v * xs[t, kb * G + j * W + w], [t, c, r])
                with T.vectorized(0, lanes) as r:
                    d = bufs.half(rb, kb, 0, row0 + r)
                    for t in range(tt):
                        total = functools.reduce(lambda a, b: a + b, [part[t, c, r] for c in range(chains)])
                        new = acc[t, r] + d * total
                        if lay.halves == 2:
                            new = new + bufs.half(rb, kb, 1, row0 + r) * sx[t, kb]
                        T.buffer_store(acc, new, [t, r])
            for t in range(tt):
                bufs.store(t0 + t, rb * ROWS + row0, lanes,
                           lambda r, t=t: acc[t, r] * _c(2.0 ** PRODUCT_EXP, "float32"))


def qlinear_gemv(dtype: str, k: int, n: int, bias: bool = False, fusion: Fusion = PLAIN) -> PrimFunc:
    """The GEMV PrimFunc (x, w_packed, [b,] [g,] [res,] y): tokens in tiles of up to GEMV_TILE, each one pass over W."""
    from tvm.script.ir_builder import tirx as T

    def make() -> None:
        bufs = _Buffers(qlayout(dtype), k, n, bias, fusion)
        with T.serial(0, bufs.t // GEMV_TILE) as tile:
            _gemv_tile(bufs, GEMV_TILE, tile * GEMV_TILE)
        rest = bufs.t % GEMV_TILE
        for tt in range(1, GEMV_TILE):
            with T.If(rest == tt):
                with T.Then():
                    _gemv_tile(bufs, tt, bufs.t - tt)

    return _build("qlinear_gemv", make)


# ------------------------------------------------------------------ GEMM


def _prologue_rows(bufs: _Buffers) -> Any:
    """Emit x after the prologue for every token into a [T, K] buffer (parallel over tokens); return it."""
    from tvm.script.ir_builder import tirx as T

    k, lanes = bufs.k, _row_lanes(bufs.k)
    xn = T.alloc_buffer((bufs.t, k), "float32")
    with T.parallel(0, bufs.t) as t:
        inv = T.alloc_buffer((1,), "float32")
        bufs.row_stat(t, inv, 0)
        with T.serial(0, k // lanes) as c:
            with T.vectorized(0, lanes) as r:
                T.buffer_store(xn, bufs.xval(t, c * lanes + r, inv, 0), [t, c * lanes + r])
    return xn


def qlinear_gemm(dtype: str, k: int, n: int, bias: bool = False, fusion: Fusion = PLAIN) -> PrimFunc:
    """The GEMM PrimFunc (x, w_packed, [b,] [g,] [res,] y): per row block, decode a [K, 16] panel, then 6 x 16 tiles over T.

    With a prologue, x is first transformed into a [T, K] workspace (one parallel pass over the tokens).
    """
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    def make() -> None:
        bufs = _Buffers(qlayout(dtype), k, n, bias, fusion)
        lay = bufs.lay
        G, W, P, bits = lay.fmt.group, lay.words, lay.per_word, lay.bits
        t_len = bufs.t
        x = bufs.x if fusion.prologue == "none" else _prologue_rows(bufs)
        with T.parallel(0, bufs.nb) as rb, _denormal_inputs():
            panel = T.alloc_buffer((k, ROWS), "float32")  # the row block's weights * 2^-PRODUCT_EXP
            with T.serial(0, bufs.kb) as kb:
                head = T.alloc_buffer((2, ROWS), "float32")  # d and the per-block constant lo*d (+ m)
                with T.vectorized(0, ROWS) as r:
                    d = bufs.half(rb, kb, 0, r)
                    const = d * _c(float(lay.lo), "float32")
                    if lay.halves == 2:
                        const = const + bufs.half(rb, kb, 1, r)
                    T.buffer_store(head, d, [0, r])
                    T.buffer_store(head, const * _c(2.0 ** -PRODUCT_EXP, "float32"), [1, r])
                low = 23 // bits
                for j_begin, j_end in ((0, low), (low, P)):
                    with T.unroll(j_begin, j_end) as j:
                        pos = j * bits - (_high_shift(bits) if j_begin else 0)
                        with T.serial(0, W) as w:
                            with T.vectorized(0, ROWS) as r:
                                v = _denormal_slot(bufs.word(rb, kb, w, r), bits, j, j_begin > 0)
                                scaled_d = head[0, r] * _pow2(149 - PRODUCT_EXP - pos)
                                T.buffer_store(panel, v * scaled_d + head[1, r], [kb * G + j * W + w, r])
            with T.serial(0, (t_len + GEMM_ROWS - 1) // GEMM_ROWS) as to:
                acc = T.alloc_buffer((GEMM_ROWS, ROWS), "float32")
                for i in range(GEMM_ROWS):
                    with T.vectorized(0, ROWS) as r:
                        T.buffer_store(acc, _c(0.0, "float32"), [i, r])
                with T.serial(0, k) as kk:
                    for i in range(GEMM_ROWS):
                        xv = x[tirx.min(to * GEMM_ROWS + i, t_len - 1), kk]
                        with T.vectorized(0, ROWS) as r:
                            T.buffer_store(acc, acc[i, r] + xv * panel[kk, r], [i, r])
                for i in range(GEMM_ROWS):
                    with T.If(to * GEMM_ROWS + i < t_len):
                        with T.Then():
                            bufs.store(to * GEMM_ROWS + i, rb * ROWS, ROWS,
                                       lambda r, i=i: acc[i, r] * _c(2.0 ** PRODUCT_EXP, "float32"))

    return _build("qlinear_gemm", make)


# ------------------------------------------------------------------ Embedding


def qembedding(dtype: str, vocab: int, k: int) -> PrimFunc:
    """The Embedding PrimFunc (ids int32 [T], w_packed, out [T, K]): decode each id's row from the packed blocks."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    lay = qlayout(dtype)
    G, W, P, bits = lay.fmt.group, lay.words, lay.per_word, lay.bits

    def make() -> None:
        t_len = tirx.Var("T", "int64")
        kb_n, nb = k // G, -(-vocab // ROWS)
        ids = T.match_buffer(T.arg("ids", T.handle()), (t_len,), "int32")
        w = T.match_buffer(T.arg("w", T.handle()), (nb, kb_n, lay.record), "uint32")
        out = T.match_buffer(T.arg("out", T.handle()), (t_len, k), "float32")
        wh = T.decl_buffer((nb, kb_n, 2 * lay.record), "float16", data=w.data)
        with T.serial(0, t_len) as t:
            rb, row = ids[t] // ROWS, ids[t] % ROWS
            with T.serial(0, kb_n) as kb:
                head = [tirx.Cast("float32", wh[rb, kb, 2 * ROWS * W + f * ROWS + row]) for f in range(lay.halves)]
                for j in range(P):
                    with T.vectorized(0, W) as wi:
                        q = _code(w[rb, kb, wi * ROWS + row], bits, j) + _c(float(lay.lo), "float32")
                        T.buffer_store(out, q * head[0] + head[1] if lay.halves == 2 else q * head[0],
                                       [t, kb * G + j * W + wi])

    return _build("qembedding", make)


# ------------------------------------------------------------------ lowerings


def lower_qlinear(req: LowerRequest, fusion: Fusion = PLAIN) -> Kernel:
    """(Fused)Linear with a block-quantized weight: GEMV below GEMM_MIN_T tokens, decoded-panel GEMM from there."""
    t = req.types
    if t["input"].rank != 2:
        raise NotImplementedError(f"Linear lowering needs a 2-D input, got {t['input']}")
    wt = t["weight"]
    lay = qlayout(wt.dtype)
    n, k = wt.shape
    bias = "bias" in t
    return Kernel(qlinear_gemv(wt.dtype, k, n, bias, fusion), fusion.params(bias),
                  large=qlinear_gemm(wt.dtype, k, n, bias, fusion), large_from=GEMM_MIN_T,
                  packs={"weight": lay.pack_name()})


def lower_qembedding(req: LowerRequest) -> Kernel:
    """Embedding with a block-quantized weight (same packed copy as a tied lm_head): rows decoded to float32."""
    wt = req.types["weight"]
    if req.types["input"].rank != 1 or req.types["input"].dtype != "int32":
        raise NotImplementedError(f"quantized Embedding needs int32 ids [T], got {req.types['input']}")
    lay = qlayout(wt.dtype)
    vocab, k = wt.shape
    return Kernel(qembedding(wt.dtype, vocab, k), ("input", "weight", "out"), packs={"weight": lay.pack_name()})
