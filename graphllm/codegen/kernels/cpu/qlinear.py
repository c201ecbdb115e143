"""Linear and Embedding over block-quantized weights (dsl/qformats), decoding the blocks inside the loop.

Packed layout: `graphllm.layouts.pack_qweight` (once at load; the records hold exactly the raw blocks'
bytes): per (16-row block, K block) [W words][16 rows] of unsigned codes u = q - lo, then the fp16
scales d (and mins m). A weight is d * (u + lo) (+ m): the format's own value, computed in float32.

GEMV (T < large_from; rows are the vector lanes, so nothing is reduced across lanes): one AND
isolates a slot; a slot that lies in float32 mantissa bits 0..22 then *is* the denormal float
u * 2^(p - 149) (p its bit position), and the slots above bit 22 come down with one shared shift.
So there is no integer-to-float conversion: one AND and one FMA per 8 weights, against x pre-scaled
by 2^(149 - PRODUCT_EXP - p) (exact powers of two, once per call, with the per-block sums of x).
Per block and row y += d * (sum_k u*x + lo * sum x) (+ m * sum x), in 3 partial sums per token.
GEMM (T >= large_from): each thread decodes its row block's [K, 16] panel to float32 (the same
AND, then one FMA by d and the block constant), then runs 6 x 16 register tiles over all tokens.
Both accumulate float32 products of float32 activations: the result is a float32 matmul against
the exactly dequantized weights (no activation quantization), scaled by exact powers of two.
Knobs (KNOBS): the crossover, the GEMV's token tile, rows per vector step, partial sums and prefetch
distance, the GEMM tile's rows.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from graphllm.codegen.fusion import PLAIN, Fusion
from graphllm.codegen.kernels.common import fast_exp, inv_root_mean, widen
from graphllm.codegen.kernels.cpu import sched
from graphllm.codegen.knobs import Knob, defaults
from graphllm.codegen.lower import Kernel, LowerRequest
from graphllm.layouts import QROWS, QLayout, SubLayout, qlayout

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

KNOBS = (
    Knob("large_from", (1, 2, 4, 6, 8, 10, 12, 16, 24, 32), 10,
         "token count from which the GEMM runs (2-thread crossover: T=9 GEMV 167 us, GEMM 201 us)"),
    Knob("gemv_tile", (1, 2, 3, 4, 5, 6), 5,
         "tokens per GEMV pass over the weights (16 ymm registers: 5 tokens x (sums + partial sums))"),
    Knob("gemv_rows", (8, 16), 16, "output rows per GEMV vector step for a lone token (16: two ymm; 8 was slower for q4)"),
    Knob("chains", (1, 2, 3, 4), 3,
         "GEMV partial sums per token at most (3 ran 5-15% faster than 2 or 4 for q4 at T=1: FMA latency vs spills)"),
    Knob("prefetch", (0, 2048, 4096, 8192, 16384, 32768), 8192,
         "GEMV software prefetch distance in the weight stream, bytes (0: none; 8192: 7.9 -> 10 GB/s on 1 thread)"),
    Knob("gemm_rows", (2, 3, 4, 6, 8), 6, "token rows of the GEMM register tile (6 x 16 floats = 12 ymm accumulators)"),
)
DEFAULTS = defaults(KNOBS)
PRODUCT_EXP = 60  # the GEMV accumulates u * x * 2^-PRODUCT_EXP (see denormal_slot), rescaled at the end
DAZ_BIT = 0x40  # x86 MXCSR "denormals are zero"
_VALUES_PER_STEP = 32  # codes decoded per unrolled inner step of the GEMV


# ------------------------------------------------------------------ TIR building blocks


def tconst(value: float | int, dtype: str) -> Any:
    """A TIR constant."""
    from tvm import tirx

    return tirx.const(value, dtype)


def _code(word: Any, bits: int, j: int) -> Any:
    """Code slot j of a uint32 word as float32 (the unsigned code u)."""
    from tvm import tirx

    shifted = word >> tconst(bits * j, "uint32") if j else word
    code = shifted if bits * (j + 1) == 32 else shifted & tconst((1 << bits) - 1, "uint32")
    return tirx.Cast("float32", tirx.Cast("int32", code))


def pow2(exponent: Any) -> Any:
    """float32 2^exponent for an int expression (an unrolled loop var folds to a constant): the exponent bits."""
    from tvm import tirx

    return tirx.reinterpret("float32", ((exponent + 127) * (1 << 23)).astype("int32"))


def high_shift(bits: int) -> int:
    """Right shift that brings the code slots above float32 mantissa bit 22 down into the mantissa."""
    return bits * (23 // bits)


def slot_pos(bits: int, j: int) -> int:
    """Bit position of code slot j in what the GEMV reinterprets (the word, or the word >> high_shift)."""
    return bits * j if bits * (j + 1) <= 23 else bits * j - high_shift(bits)


def denormal_slot(word: Any, bits: int, j: Any, high: bool) -> Any:
    """Code slot j (an unrolled loop var) of a uint32 word as the float32 u * 2^(p - 149), p = slot_pos.

    One AND isolates the slot (the `high` slots, above mantissa bit 22, from one right shift of the
    word that they share): with a zero exponent field the bits read as a denormal float32 that is
    exactly u * 2^(p - 149), so no integer-to-float conversion is needed (x is pre-scaled by
    2^(149 - PRODUCT_EXP - p) instead; Zen 3 multiplies denormal inputs at full speed).
    """
    from tvm import tirx

    mask, shift = tconst((1 << bits) - 1, "uint32"), high_shift(bits)
    if high:
        return tirx.reinterpret("float32", (word >> tconst(shift, "uint32")) & (mask << (j * bits - shift).astype("uint32")))
    return tirx.reinterpret("float32", word & (mask << (j * bits).astype("uint32")))


@contextlib.contextmanager
def denormal_inputs() -> Iterator[None]:
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
    daz = (csr[0] & tconst(DAZ_BIT, "uint32")) != tconst(0, "uint32")
    with T.If(daz):
        with T.Then():
            T.buffer_store(csr, csr[0] ^ tconst(DAZ_BIT, "uint32"), [1])
            T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.sse.ldmxcsr", tirx.address_of(csr[1])))
    yield
    with T.If(daz):
        with T.Then():
            T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.sse.ldmxcsr", tirx.address_of(csr[0])))


class QBuffers:
    """The PrimFunc parameters of a quantized Linear: x [T, K], packed w (+ fp16 view), [b], [norm], [res], y [T, N]."""

    def __init__(self, lay: QLayout | SubLayout, k: int, n: int, bias: bool, fusion: Fusion = PLAIN) -> None:
        from tvm import tirx
        from tvm.script.ir_builder import tirx as T

        self.lay, self.k, self.n, self.fusion = lay, k, n, fusion
        self.kb = k // lay.fmt.group
        self.nb = -(-n // QROWS)
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
        k, lanes = self.k, sched.lanes(self.k)
        part = T.alloc_buffer((lanes,), "float32")
        with T.vectorized(0, lanes) as r:
            T.buffer_store(part, tconst(0.0, "float32"), [r])
        with T.serial(0, k // lanes) as c:
            with T.vectorized(0, lanes) as r:
                xv = self.x[t, c * lanes + r]
                T.buffer_store(part, part[r] + xv * xv, [r])
        total = functools.reduce(lambda a, b: a + b, [part[r] for r in range(lanes)])
        T.buffer_store(inv, inv_root_mean(total, k, self.fusion.eps), [slot])

    def xval(self, t: Any, c: Any, inv: Any, slot: Any) -> Any:
        """The matmul's input at row t, column c: x after the prologue (float32, as the reference computes it)."""
        p = self.fusion.prologue
        if p == "rmsnorm":
            g = self.g[c] + tconst(self.fusion.offset, "float32") if self.fusion.offset else self.g[c]
            return self.x[t, c] * inv[slot] * g
        if p == "swiglu":
            a = self.x[t, c]
            return a / (tconst(1.0, "float32") + fast_exp(-a)) * self.x[t, self.k + c]
        return self.x[t, c]

    def word(self, rb: Any, kb: Any, w: Any, row: Any) -> Any:
        """Code word w of row `row` (0..15) of a record."""
        return self.w[rb, kb, w * QROWS + row]

    def half(self, rb: Any, kb: Any, field: int, row: Any) -> Any:
        """Header field (0: d, 1: m) of row `row` of a record, widened to float32."""
        return widen(self.wh[rb, kb, 2 * QROWS * self.lay.words + field * QROWS + row], "float16")

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

        if self.n % QROWS == 0:
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


def build_func(name: str, make: Any) -> PrimFunc:
    """Run an IRBuilder body function inside a fresh prim_func and return the PrimFunc."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            make()
    return ib.get()


# ------------------------------------------------------------------ GEMV


def gemv_chains(tt: int, lanes: int, steps: int, most: int) -> int:
    """Independent partial sums per token and block: as many as 16 ymm registers allow, at most `most`."""
    vecs = tt * lanes // 8
    return max(1, min(most, steps, (12 - vecs) // vecs))


def prologue_tile(bufs: QBuffers, tt: int, t0: Any) -> Callable[[Any, Any], Any]:
    """Emit the prologue's values of a token tile into a [tt, K] buffer (when there is one); return x_at(t, c)."""
    from tvm.script.ir_builder import tirx as T

    k = bufs.k
    if bufs.fusion.prologue != "none":  # the prologue's values first, in full-width vector loops
        xp = T.alloc_buffer((tt, k), "float32")
        inv = T.alloc_buffer((tt,), "float32")
        lanes_k = sched.lanes(k)
        with T.serial(0, tt) as t:
            bufs.row_stat(t0 + t, inv, t)
            with T.serial(0, k // lanes_k) as c:
                with T.vectorized(0, lanes_k) as r:
                    T.buffer_store(xp, bufs.xval(t0 + t, c * lanes_k + r, inv, t), [t, c * lanes_k + r])

    def x_at(t: Any, c: Any) -> Any:
        """The matmul's input (after the prologue) of tile token t at column c."""
        return xp[t, c] if bufs.fusion.prologue != "none" else bufs.x[t0 + t, c]

    return x_at


def _gemv_tile(bufs: QBuffers, tt: int, t0: Any, knobs: Mapping[str, Any]) -> None:
    """Emit y[t0:t0+tt] for a static token count tt: prologue (scaled x, block sums), then rows in parallel.

    Rows per vector op: `gemv_rows` for one token, 8 (one ymm) when several tokens share each decoded code.
    """
    from tvm.script.ir_builder import tirx as T

    lay, k, kb_n = bufs.lay, bufs.k, bufs.kb
    G, W, P, bits = lay.fmt.group, lay.words, lay.per_word, lay.bits
    xs = T.alloc_buffer((tt, k), "float32")
    sx = T.alloc_buffer((tt, kb_n), "float32")
    x_at = prologue_tile(bufs, tt, t0)
    with T.serial(0, tt) as t:
        with T.serial(0, kb_n) as kb:
            part = T.alloc_buffer((W,), "float32")
            for j in range(P):
                scale = 2.0 ** (149 - PRODUCT_EXP - slot_pos(bits, j))
                with T.vectorized(0, W) as w:
                    xv = x_at(t, kb * G + j * W + w)
                    T.buffer_store(xs, xv * tconst(scale, "float32"), [t, kb * G + j * W + w])
                    T.buffer_store(part, xv if j == 0 else part[w] + xv, [w])
            total = functools.reduce(lambda a, b: a + b, [part[w] for w in range(W)])
            T.buffer_store(sx, total * tconst(2.0 ** -PRODUCT_EXP, "float32"), [t, kb])

    lanes = knobs["gemv_rows"] if tt == 1 else 8
    step_words = max(d for d in range(1, W + 1) if W % d == 0 and d * P <= max(P, _VALUES_PER_STEP))
    chains = gemv_chains(tt, lanes, step_words * P, knobs["chains"])
    with gemv_row_blocks(bufs, tt, t0, lanes, chains, knobs["prefetch"]) as (rb, kb, row0, acc, part):
        for t in range(tt):
            for c in range(chains):
                with T.vectorized(0, lanes) as r:
                    init = sx[t, kb] * tconst(float(lay.lo), "float32") if c == 0 and lay.lo else tconst(0.0, "float32")
                    T.buffer_store(part, init, [t, c, r])
        with T.serial(0, W // step_words) as ws:
            with T.unroll(0, step_words) as wi:
                w = ws * step_words + wi
                low = 23 // bits  # slots that lie in the word's mantissa bits
                for j_begin, j_end in ((0, low), (low, P)):
                    with T.unroll(j_begin, j_end) as j:
                        c = (wi * P + j) % chains
                        with T.vectorized(0, lanes) as r:
                            v = denormal_slot(bufs.word(rb, kb, w, row0 + r), bits, j, j_begin > 0)
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


@contextlib.contextmanager
def gemv_row_blocks(bufs: QBuffers, tt: int, t0: Any, lanes: int, chains: int,
                    prefetch: int) -> Iterator[tuple[Any, Any, Any, Any, Any]]:
    """Emit the GEMV's loops: row blocks in parallel, `lanes` rows at a time, then K blocks (with software prefetch).

    Yields (rb, kb, row0, acc, part) for the body of one K block, which adds into acc [tt, lanes] (partial
    sums: part [tt, chains, lanes]); stores acc * 2^PRODUCT_EXP into y after the K loop.
    """
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    kb_n, record = bufs.kb, bufs.lay.record
    wflat = T.decl_buffer((bufs.nb * kb_n * record,), "uint32", data=bufs.w.data)
    with T.parallel(0, bufs.nb) as rb, denormal_inputs():
        with T.serial(0, QROWS // lanes) as h:
            row0 = h * lanes
            acc = T.alloc_buffer((tt, lanes), "float32")
            part = T.alloc_buffer((tt, chains, lanes), "float32")
            for t in range(tt):
                with T.vectorized(0, lanes) as r:
                    T.buffer_store(acc, tconst(0.0, "float32"), [t, r])
            with T.serial(0, kb_n) as kb:
                for line in range(0, record if prefetch else 0, 16):
                    ahead = (rb * kb_n + kb) * record + prefetch // 4 + line
                    T.evaluate(tirx.call_intrin("void", "tirx.prefetch", tirx.address_of(wflat[ahead]), 0, 3, 1))
                yield rb, kb, row0, acc, part
            for t in range(tt):
                bufs.store(t0 + t, rb * QROWS + row0, lanes,
                           lambda r, t=t: acc[t, r] * tconst(2.0 ** PRODUCT_EXP, "float32"))


def qlinear_gemv(dtype: str, k: int, n: int, bias: bool = False, fusion: Fusion = PLAIN,
                 knobs: Mapping[str, Any] = DEFAULTS) -> PrimFunc:
    """The GEMV PrimFunc (x, w_packed, [b,] [g,] [res,] y): tokens in tiles of up to `gemv_tile`, each one pass over W."""
    return token_tiles("qlinear_gemv", lambda: QBuffers(qlayout(dtype), k, n, bias, fusion), knobs["gemv_tile"],
                       functools.partial(_gemv_tile, knobs=knobs))


def token_tiles(name: str, buffers: Callable[[], QBuffers], tile_len: int,
                tile: Callable[[QBuffers, int, Any], None]) -> PrimFunc:
    """A GEMV PrimFunc: tile(bufs, tt, t0) over the tokens in tiles of `tile_len`, then the remainder's tile."""
    from tvm.script.ir_builder import tirx as T

    def make() -> None:
        bufs = buffers()
        with T.serial(0, bufs.t // tile_len) as i:
            tile(bufs, tile_len, i * tile_len)
        rest = bufs.t % tile_len
        for tt in range(1, tile_len):
            with T.If(rest == tt):
                with T.Then():
                    tile(bufs, tt, bufs.t - tt)

    return build_func(name, make)


# ------------------------------------------------------------------ GEMM


def prologue_rows(bufs: QBuffers) -> Any:
    """Emit x after the prologue for every token into a [T, K] buffer (parallel over tokens); return it."""
    from tvm.script.ir_builder import tirx as T

    k, lanes = bufs.k, sched.lanes(bufs.k)
    xn = T.alloc_buffer((bufs.t, k), "float32")
    with T.parallel(0, bufs.t) as t:
        inv = T.alloc_buffer((1,), "float32")
        bufs.row_stat(t, inv, 0)
        with T.serial(0, k // lanes) as c:
            with T.vectorized(0, lanes) as r:
                T.buffer_store(xn, bufs.xval(t, c * lanes + r, inv, 0), [t, c * lanes + r])
    return xn


def qlinear_gemm(dtype: str, k: int, n: int, bias: bool = False, fusion: Fusion = PLAIN,
                 rows: int = DEFAULTS["gemm_rows"]) -> PrimFunc:
    """The GEMM PrimFunc (x, w_packed, [b,] [g,] [res,] y): per row block, decode a [K, 16] panel, then rows x 16 tiles over T.

    With a prologue, x is first transformed into a [T, K] workspace (one parallel pass over the tokens).
    """
    from tvm.script.ir_builder import tirx as T

    def make() -> None:
        bufs = QBuffers(qlayout(dtype), k, n, bias, fusion)
        lay = bufs.lay
        G, W, P, bits = lay.fmt.group, lay.words, lay.per_word, lay.bits
        x = bufs.x if fusion.prologue == "none" else prologue_rows(bufs)
        with T.parallel(0, bufs.nb) as rb, denormal_inputs():
            panel = T.alloc_buffer((k, QROWS), "float32")  # the row block's weights * 2^-PRODUCT_EXP
            with T.serial(0, bufs.kb) as kb:
                head = T.alloc_buffer((2, QROWS), "float32")  # d and the per-block constant lo*d (+ m)
                with T.vectorized(0, QROWS) as r:
                    d = bufs.half(rb, kb, 0, r)
                    const = d * tconst(float(lay.lo), "float32")
                    if lay.halves == 2:
                        const = const + bufs.half(rb, kb, 1, r)
                    T.buffer_store(head, d, [0, r])
                    T.buffer_store(head, const * tconst(2.0 ** -PRODUCT_EXP, "float32"), [1, r])
                low = 23 // bits
                for j_begin, j_end in ((0, low), (low, P)):
                    with T.unroll(j_begin, j_end) as j:
                        pos = j * bits - (high_shift(bits) if j_begin else 0)
                        with T.serial(0, W) as w:
                            with T.vectorized(0, QROWS) as r:
                                v = denormal_slot(bufs.word(rb, kb, w, r), bits, j, j_begin > 0)
                                scaled_d = head[0, r] * pow2(149 - PRODUCT_EXP - pos)
                                T.buffer_store(panel, v * scaled_d + head[1, r], [kb * G + j * W + w, r])
            panel_tiles(bufs, x, panel, rb, rows)

    return build_func("qlinear_gemm", make)


def panel_tiles(bufs: QBuffers, x: Any, panel: Any, rb: Any, rows: int) -> None:
    """Emit y for row block rb over all tokens: rows x 16 register tiles of x against the decoded [K, 16] panel."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    t_len = bufs.t
    with T.serial(0, (t_len + rows - 1) // rows) as to:
        acc = T.alloc_buffer((rows, QROWS), "float32")
        for i in range(rows):
            with T.vectorized(0, QROWS) as r:
                T.buffer_store(acc, tconst(0.0, "float32"), [i, r])
        with T.serial(0, bufs.k) as kk:
            for i in range(rows):
                xv = x[tirx.min(to * rows + i, t_len - 1), kk]
                with T.vectorized(0, QROWS) as r:
                    T.buffer_store(acc, acc[i, r] + xv * panel[kk, r], [i, r])
        for i in range(rows):
            with T.If(to * rows + i < t_len):
                with T.Then():
                    bufs.store(to * rows + i, rb * QROWS, QROWS,
                               lambda r, i=i: acc[i, r] * tconst(2.0 ** PRODUCT_EXP, "float32"))


# ------------------------------------------------------------------ Embedding


def embedding_params(lay: QLayout | SubLayout, vocab: int, k: int) -> tuple[Any, Any, Any, Any]:
    """Declare a quantized Embedding's parameters (ids int32 [T], packed w, out [T, K]); return (T, ids, w, out)."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    t_len = tirx.Var("T", "int64")
    ids = T.match_buffer(T.arg("ids", T.handle()), (t_len,), "int32")
    w = T.match_buffer(T.arg("w", T.handle()), (-(-vocab // QROWS), k // lay.fmt.group, lay.record), "uint32")
    out = T.match_buffer(T.arg("out", T.handle()), (t_len, k), "float32")
    return t_len, ids, w, out


def qembedding(dtype: str, vocab: int, k: int) -> PrimFunc:
    """The Embedding PrimFunc (ids int32 [T], w_packed, out [T, K]): decode each id's row from the packed blocks."""
    from tvm.script.ir_builder import tirx as T

    lay = qlayout(dtype)
    G, W, P, bits = lay.fmt.group, lay.words, lay.per_word, lay.bits

    def make() -> None:
        t_len, ids, w, out = embedding_params(lay, vocab, k)
        kb_n, nb = k // G, -(-vocab // QROWS)
        wh = T.decl_buffer((nb, kb_n, 2 * lay.record), "float16", data=w.data)
        with T.serial(0, t_len) as t:
            rb, row = ids[t] // QROWS, ids[t] % QROWS
            with T.serial(0, kb_n) as kb:
                head = [widen(wh[rb, kb, 2 * QROWS * W + f * QROWS + row], "float16") for f in range(lay.halves)]
                for j in range(P):
                    with T.vectorized(0, W) as wi:
                        q = _code(w[rb, kb, wi * QROWS + row], bits, j) + tconst(float(lay.lo), "float32")
                        T.buffer_store(out, q * head[0] + head[1] if lay.halves == 2 else q * head[0],
                                       [t, kb * G + j * W + wi])

    return build_func("qembedding", make)


# ------------------------------------------------------------------ lowerings


def lower_qlinear(req: LowerRequest, knobs: Mapping[str, Any], fusion: Fusion = PLAIN) -> Kernel:
    """(Fused)Linear with a block-quantized weight: GEMV below `large_from` tokens, decoded-panel GEMM from there."""
    t = req.types
    if t["input"].rank != 2:
        raise NotImplementedError(f"Linear lowering needs a 2-D input, got {t['input']}")
    wt = t["weight"]
    lay = qlayout(wt.dtype)
    n, k = wt.shape
    bias = "bias" in t
    return Kernel(qlinear_gemv(wt.dtype, k, n, bias, fusion, knobs), fusion.params(bias),
                  large=qlinear_gemm(wt.dtype, k, n, bias, fusion, knobs["gemm_rows"]), large_from=knobs["large_from"],
                  packs={"weight": lay.pack_name()})


def lower_qembedding(req: LowerRequest) -> Kernel:
    """Embedding with a block-quantized weight (same packed copy as a tied lm_head): rows decoded to float32."""
    wt = req.types["weight"]
    if req.types["input"].rank != 1 or req.types["input"].dtype != "int32":
        raise NotImplementedError(f"quantized Embedding needs int32 ids [T], got {req.types['input']}")
    lay = qlayout(wt.dtype)
    vocab, k = wt.shape
    return Kernel(qembedding(wt.dtype, vocab, k), ("input", "weight", "out"), packs={"weight": lay.pack_name()})
