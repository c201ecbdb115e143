"""Linear and Embedding over sub-block formats (q5_0, q5_1 and the K-quants q4_k, q5_k, q6_k), decoding in the loop.

Packed layout: `graphllm.layouts.pack_subblocks` (once at load): per (16-row block, block) the codes of
each sub-block as code planes (the low 4 bits; 5- and 6-bit codes add a plane of their high 1 or 2
bits, worth 16), each [W words][16 rows]; then the sub-blocks' integer scales (and mins) as bytes;
then the fp16 heads. A weight is D * (u + lo) + M with D = d * scale (or d), M = m, -dmin * min or 0.

The kernels are qlinear's, one level deeper: the GEMV decodes each low-plane slot as a denormal float with
the code's high bits (5- and 6-bit codes) ORed in above it (two ANDs, one OR, one FMA per 8 weights; one
AND for 4-bit codes) against x pre-scaled by 2^(149 - PRODUCT_EXP - p); per sub-block and row
y += D * (sum_k u*x + lo * sum x) + M * sum x, with D and M formed from the bytes once per sub-block
(shared by the tokens of the tile). The GEMM decodes a row block's [K, 16] panel plane by plane, then
runs qlinear's register tiles. Knobs: qlinear's (the same template, one more loop level).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from graphllm.codegen.fusion import PLAIN, Fusion
from graphllm.codegen.kernels.common import widen
from graphllm.codegen.kernels.cpu.qlinear import (
    DEFAULTS,
    PRODUCT_EXP,
    QBuffers,
    build_func,
    denormal_inputs,
    denormal_slot,
    embedding_params,
    gemv_chains,
    gemv_row_blocks,
    high_shift,
    panel_tiles,
    pow2,
    prologue_rows,
    prologue_tile,
    slot_pos,
    tconst,
    token_tiles,
)
from graphllm.codegen.lower import Kernel, LowerRequest
from graphllm.layouts import QROWS, SubLayout, sublayout

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc


class _Record:
    """Accessors of one packed record's parts, for the kernels of a sub-block format."""

    def __init__(self, lay: SubLayout, w: Any, nb: Any, kb_n: int) -> None:
        from tvm.script.ir_builder import tirx as T

        self.lay, self.spec, self.w = lay, lay.spec, w
        self.wh = T.decl_buffer((nb, kb_n, 2 * lay.record), "float16", data=w.data)
        self.wb = T.decl_buffer((nb, kb_n, 4 * lay.record), self.spec.scales or "uint8", data=w.data)

    def word(self, rb: Any, kb: Any, s: Any, plane: int, w: Any, row: Any) -> Any:
        """Code word w of a plane of sub-block s, row `row` (0..15)."""
        lay = self.lay
        return self.w[rb, kb, (s * lay.sub_words + lay.plane_offset(plane) + w) * QROWS + row]

    def head(self, rb: Any, kb: Any, field: int, row: Any) -> Any:
        """fp16 head (0: d, 1: m or dmin) of a row, widened to float32."""
        return widen(self.wh[rb, kb, 2 * self.lay.heads_at + field * QROWS + row], "float16")

    def byte(self, rb: Any, kb: Any, field: int, s: Any, row: Any) -> Any:
        """Integer scale (field 0) or min (field 1) of sub-block s and a row, as float32."""
        from tvm import tirx

        return tirx.Cast("float32", self.wb[rb, kb, 4 * self.lay.scales_at + (field * self.spec.nsub + s) * QROWS + row])

    def scale(self, rb: Any, kb: Any, s: Any, row: Any) -> Any:
        """D of sub-block s and a row: d times the sub-block's scale (d alone for formats without)."""
        d = self.head(rb, kb, 0, row)
        return d * self.byte(rb, kb, 0, s, row) if self.spec.scales else d

    def offset(self, rb: Any, kb: Any, s: Any, row: Any) -> Any | None:
        """M of sub-block s and a row (m, or -dmin * min), None for formats without."""
        if self.spec.mins == "m":
            return self.head(rb, kb, 1, row)
        if self.spec.mins == "dmin":
            return -(self.head(rb, kb, 1, row) * self.byte(rb, kb, 1, s, row))
        return None


_LOW_BITS = 4  # the first code plane holds every code's low 4 bits (layouts.SubLayout.planes)


def _slots(bits: int) -> tuple[tuple[int, int], ...]:
    """The code slots of a word split at float32 mantissa bit 22: (begin, end) of the low ones, then the high ones."""
    low = 23 // bits
    return tuple((b, e) for b, e in ((0, low), (low, 32 // bits)) if e > b)


def _element(lay: SubLayout, plane: int, s: Any, j: Any, w: Any) -> Any:
    """Index inside a block of slot j of word w of a plane of sub-block s."""
    return s * lay.spec.sub + j * lay.plane_words(plane) + w


def _high_bits(lay: SubLayout) -> int:
    """Bits of a code's high plane (0: 4-bit codes), checked to sit where _whole_slot reads them: one word per
    sub-block and row, element e's bits at hb*e, i.e. those of slot j of low word w at 4j + hb*w."""
    if len(lay.planes) == 1:
        return 0
    hb = lay.planes[1][0]
    if lay.plane_words(1) != 1 or hb * lay.plane_words(0) != _LOW_BITS:
        raise NotImplementedError(f"{lay.fmt.name}: the GEMV needs a one-word high plane of 4 / (low words) bits")
    return hb


def _whole_slot(low: Any, high: Any, hb: int, w: Any, j: Any, upper: bool) -> Any:
    """Slot j of low word w with its hb high bits ORed in above it, as the denormal float32 u * 2^(p - 149).

    The low code is at bits 4j of `low`, its high bits at 4j + hb*w of `high` (see _high_bits): moved to 4j + 4,
    the whole code is one field, so a 5- or 6-bit code costs one FMA (not one per plane). The `upper` slots
    (j >= 5: the field would pass mantissa bit 22) come down by high_shift(4) = 20 first, as in denormal_slot.
    """
    from tvm import tirx

    shift = high_shift(_LOW_BITS)
    if upper:
        lw, pos = low >> tconst(shift, "uint32"), j * _LOW_BITS - shift
        hw = high >> (shift - _LOW_BITS + hb * w).astype("uint32")
    else:
        lw, hw, pos = low, high << (_LOW_BITS - hb * w).astype("uint32"), j * _LOW_BITS
    code = (lw & (tconst((1 << _LOW_BITS) - 1, "uint32") << pos.astype("uint32"))) | \
        (hw & (tconst((1 << hb) - 1, "uint32") << (pos + _LOW_BITS).astype("uint32")))
    return tirx.reinterpret("float32", code)


# ------------------------------------------------------------------ GEMV


def _gemv_tile(bufs: QBuffers, tt: int, t0: Any, knobs: Mapping[str, Any]) -> None:
    """Emit y[t0:t0+tt] for a static token count tt: pre-scaled x and sub-block sums, then rows in parallel.

    Codes are decoded whole (the high plane ORed into the low slots, _whole_slot), so x is pre-scaled once, by the
    low plane's slot positions: the Q6_K decode step ran 52 -> 42 ms on the 1.7B model (two planes: 2 FMAs a code).
    """
    from tvm.script.ir_builder import tirx as T

    lay: SubLayout = bufs.lay
    spec, k, kb_n, G = lay.spec, bufs.k, bufs.kb, lay.fmt.group
    hb, words = _high_bits(lay), lay.plane_words(0)
    xs = T.alloc_buffer((tt, k), "float32")
    sx = T.alloc_buffer((tt, k // spec.sub), "float32")
    x_at = prologue_tile(bufs, tt, t0)
    with T.serial(0, tt) as t:
        with T.serial(0, k // spec.sub) as s:
            part = T.alloc_buffer((words,), "float32")
            for j in range(32 // _LOW_BITS):
                scale = 2.0 ** (149 - PRODUCT_EXP - slot_pos(_LOW_BITS, j))
                with T.vectorized(0, words) as w:
                    e = _element(lay, 0, s, j, w)
                    xv = x_at(t, e)
                    T.buffer_store(xs, xv * tconst(scale, "float32"), [t, e])
                    T.buffer_store(part, xv if j == 0 else part[w] + xv, [w])
            total = functools.reduce(lambda a, b: a + b, [part[w] for w in range(words)])
            T.buffer_store(sx, total * tconst(2.0 ** -PRODUCT_EXP, "float32"), [t, s])

    lanes = knobs["gemv_rows"] if tt == 1 else 8
    rec = _Record(lay, bufs.w, bufs.nb, kb_n)
    chains = gemv_chains(tt, lanes, spec.sub, knobs["chains"])
    with gemv_row_blocks(bufs, tt, t0, lanes, chains, knobs["prefetch"]) as (rb, kb, row0, acc, part):
        with T.serial(0, spec.nsub) as s:
            sub = kb * spec.nsub + s
            for t in range(tt):
                for c in range(chains):
                    with T.vectorized(0, lanes) as r:
                        init = sx[t, sub] * tconst(float(spec.lo), "float32") if c == 0 and spec.lo else tconst(0.0, "float32")
                        T.buffer_store(part, init, [t, c, r])
            with T.unroll(0, words) as wi:
                for j_begin, j_end in _slots(_LOW_BITS):
                    with T.unroll(j_begin, j_end) as j:
                        c = (wi * (32 // _LOW_BITS) + j) % chains
                        with T.vectorized(0, lanes) as r:
                            word = rec.word(rb, kb, s, 0, wi, row0 + r)
                            v = _whole_slot(word, rec.word(rb, kb, s, 1, 0, row0 + r), hb, wi, j, j_begin > 0) \
                                if hb else denormal_slot(word, _LOW_BITS, j, j_begin > 0)
                            for t in range(tt):
                                x = xs[t, kb * G + _element(lay, 0, s, j, wi)]
                                T.buffer_store(part, part[t, c, r] + v * x, [t, c, r])
            with T.vectorized(0, lanes) as r:
                d = rec.scale(rb, kb, s, row0 + r)
                m = rec.offset(rb, kb, s, row0 + r)
                for t in range(tt):
                    total = functools.reduce(lambda a, b: a + b, [part[t, c, r] for c in range(chains)])
                    new = acc[t, r] + d * total
                    if m is not None:
                        new = new + m * sx[t, sub]
                    T.buffer_store(acc, new, [t, r])


def kquant_gemv(dtype: str, k: int, n: int, bias: bool = False, fusion: Fusion = PLAIN,
                knobs: Mapping[str, Any] = DEFAULTS) -> PrimFunc:
    """The GEMV PrimFunc (x, w_packed, [b,] [g,] [res,] y) of a sub-block format: tokens in tiles of `gemv_tile`."""
    return token_tiles("kquant_gemv", lambda: QBuffers(sublayout(dtype), k, n, bias, fusion), knobs["gemv_tile"],
                       functools.partial(_gemv_tile, knobs=knobs))


# ------------------------------------------------------------------ GEMM


def kquant_gemm(dtype: str, k: int, n: int, bias: bool = False, fusion: Fusion = PLAIN,
                rows: int = DEFAULTS["gemm_rows"]) -> PrimFunc:
    """The GEMM PrimFunc (x, w_packed, [b,] [g,] [res,] y): per row block, decode a [K, 16] panel plane by plane, then tiles."""
    from tvm.script.ir_builder import tirx as T

    def make() -> None:
        bufs = QBuffers(sublayout(dtype), k, n, bias, fusion)
        lay: SubLayout = bufs.lay
        spec, G = lay.spec, lay.fmt.group
        rec = _Record(lay, bufs.w, bufs.nb, bufs.kb)
        x = bufs.x if fusion.prologue == "none" else prologue_rows(bufs)
        with T.parallel(0, bufs.nb) as rb, denormal_inputs():
            panel = T.alloc_buffer((k, QROWS), "float32")  # the row block's weights * 2^-PRODUCT_EXP
            with T.serial(0, bufs.kb) as kb:
                with T.serial(0, spec.nsub) as s:
                    head = T.alloc_buffer((2, QROWS), "float32")  # D and the sub-block constant D*lo (+ M)
                    with T.vectorized(0, QROWS) as r:
                        d = rec.scale(rb, kb, s, r)
                        const = d * tconst(float(spec.lo), "float32")
                        m = rec.offset(rb, kb, s, r)
                        T.buffer_store(head, d, [0, r])
                        T.buffer_store(head, (const if m is None else const + m) * tconst(2.0 ** -PRODUCT_EXP, "float32"), [1, r])
                    for p, (bits, shift) in enumerate(lay.planes):
                        for j_begin, j_end in _slots(bits):
                            with T.unroll(j_begin, j_end) as j:
                                pos = j * bits - (high_shift(bits) if j_begin else 0)
                                with T.serial(0, lay.plane_words(p)) as w:
                                    with T.vectorized(0, QROWS) as r:
                                        v = denormal_slot(rec.word(rb, kb, s, p, w, r), bits, j, j_begin > 0)
                                        value = v * (head[0, r] * pow2(149 - PRODUCT_EXP - pos + shift))
                                        e = kb * G + _element(lay, p, s, j, w)
                                        T.buffer_store(panel, value + (head[1, r] if p == 0 else panel[e, r]), [e, r])
            panel_tiles(bufs, x, panel, rb, rows)

    return build_func("kquant_gemm", make)


# ------------------------------------------------------------------ Embedding


def kquant_embedding(dtype: str, vocab: int, k: int) -> PrimFunc:
    """The Embedding PrimFunc (ids int32 [T], w_packed, out [T, K]): each id's row decoded as D * (u + lo) + M."""
    from tvm import tirx
    from tvm.script.ir_builder import tirx as T

    lay = sublayout(dtype)
    spec, G = lay.spec, lay.fmt.group

    def make() -> None:
        t_len, ids, w, out = embedding_params(lay, vocab, k)
        kb_n = k // G
        rec = _Record(lay, w, -(-vocab // QROWS), kb_n)
        with T.serial(0, t_len) as t:
            rb, row = ids[t] // QROWS, ids[t] % QROWS
            with T.serial(0, kb_n) as kb:
                with T.serial(0, spec.nsub) as s:
                    d, m = rec.scale(rb, kb, s, row), rec.offset(rb, kb, s, row)
                    with T.serial(0, spec.sub) as e:
                        u = None
                        for p, (bits, shift) in enumerate(lay.planes):
                            W = lay.plane_words(p)
                            word = rec.word(rb, kb, s, p, e % W, row)
                            code = (word >> (e // W * bits).astype("uint32")) & tconst((1 << bits) - 1, "uint32")
                            code = code << tconst(shift, "uint32") if shift else code
                            u = code if u is None else u | code
                        q = tirx.Cast("float32", tirx.Cast("int32", u)) + tconst(float(spec.lo), "float32")
                        T.buffer_store(out, q * d if m is None else q * d + m, [t, kb * G + s * spec.sub + e])

    return build_func("kquant_embedding", make)


# ------------------------------------------------------------------ lowerings


def lower_kquant(req: LowerRequest, knobs: Mapping[str, Any], fusion: Fusion = PLAIN) -> Kernel:
    """(Fused)Linear with a sub-block weight: GEMV below `large_from` tokens, decoded-panel GEMM from there."""
    if req.types["input"].rank != 2:
        raise NotImplementedError(f"Linear lowering needs a 2-D input, got {req.types['input']}")
    wt = req.types["weight"]
    n, k = wt.shape
    bias = "bias" in req.types
    return Kernel(kquant_gemv(wt.dtype, k, n, bias, fusion, knobs), fusion.params(bias),
                  large=kquant_gemm(wt.dtype, k, n, bias, fusion, knobs["gemm_rows"]), large_from=knobs["large_from"],
                  packs={"weight": sublayout(wt.dtype).pack_name()})


def lower_kquant_embedding(req: LowerRequest) -> Kernel:
    """Embedding with a sub-block weight (same packed copy as a tied lm_head): rows decoded to float32."""
    wt = req.types["weight"]
    if req.types["input"].rank != 1 or req.types["input"].dtype != "int32":
        raise NotImplementedError(f"quantized Embedding needs int32 ids [T], got {req.types['input']}")
    vocab, k = wt.shape
    return Kernel(kquant_embedding(wt.dtype, vocab, k), ("input", "weight", "out"),
                  packs={"weight": sublayout(wt.dtype).pack_name()})
