"""CUDA causal GQA attention over the KV cache [S, C, Hk, D] (float16 or float32: the node's kvDtype), and the
cache write (rounding to the cache's type; reads widen to float32).

Attention is written as TE stages over the whole cache length C (masked: query row t sees keys
0..pos[t] of slot slot[t], the last `window` of them with a sliding window), scheduled by
`sched.schedule_gpu`: scores s[t, h, j] = (q * scale) . k (soft-capped as cap * tanh(s / cap)),
their max m, the sum l of exp(s - m), and sum_j exp(s - m) v / l, each a warp-per-output reduction.
The formulas are the CPU kernel's (RoPE fused into the query read and the key write; exp and tanh
through `fast_exp`), but the cost is O(C) per query whatever its position: a correct baseline, to
be replaced by a flash-decoding schedule. The cache write is direct TIR, one block per token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from graphllm.codegen.kernels.common import f32, fast_exp, narrow, widen
from graphllm.codegen.kernels.cuda.sched import KNOBS, schedule_gpu
from graphllm.codegen.kernels.stages import rope_value
from graphllm.codegen.knobs import defaults
from graphllm.codegen.lower import Kernel, LowerRequest, lowering
from graphllm.dsl.ops import kv_dtype as node_kv_dtype

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

_NEG = -3.0e38  # a masked score: exp(_NEG - max) is 0
_WRITE_THREADS = 256
DEFAULTS = defaults(KNOBS)


def attention_func(hq: int, hk: int, d: int, scale: float, window: int = 0, softcap: float = 0.0,
                   rope: tuple[int, int, int] | None = None, packed: bool = False,
                   knobs: Mapping[str, Any] = DEFAULTS, kv_dtype: str = "float32") -> PrimFunc:
    """The PrimFunc attention(q, k_cache, v_cache, pos, slot, [rope_pos, sin, cos,] out) of the module doc, over
    caches of `kv_dtype`."""
    from tvm import te, tirx

    group = hq // hk
    t_len, s_len, c_len = (te.var(name, "int64") for name in ("T", "S", "C"))
    q = te.placeholder((t_len, (hq + 2 * hk) * d) if packed else (t_len, hq, d), "float32", name="q")
    kc = te.placeholder((s_len, c_len, hk, d), kv_dtype, name="k_cache")
    vc = te.placeholder((s_len, c_len, hk, d), kv_dtype, name="v_cache")
    pos = te.placeholder((t_len,), "int32", name="pos")
    slot = te.placeholder((t_len,), "int32", name="slot")
    rot, rows, cols = rope or (0, 1, 1)
    tables = [te.placeholder((t_len,), "int32", name="rope_pos"), te.placeholder((rows, cols), "float32", name="sin"),
              te.placeholder((rows, cols), "float32", name="cos")] if rot else []

    def q_at(t: Any, h: Any, i: Any) -> Any:
        """Query element (t, h, i) before RoPE."""
        return q[t, h * d + i] if packed else q[t, h, i]

    def q_scaled(t: Any, h: Any, i: Any) -> Any:
        """The rotated (when RoPE is fused in) and scaled query element."""
        v = rope_value(q_at, t, h, i, tables[0][t], tables[1], tables[2], rot) if rot else q_at(t, h, i)
        return v * f32(scale)

    def visible(t: Any, j: Any) -> Any:
        """Whether query t sees key position j."""
        p = pos[t].astype("int64")
        seen = j <= p
        return tirx.all(seen, j > p - window) if window else seen

    i = te.reduce_axis((0, d), name="i")
    dot = te.compute((t_len, hq, c_len), lambda t, h, j: te.sum(
        q_scaled(t, h, i) * widen(kc[slot[t], j, h // group, i], kv_dtype), axis=i), name="score")

    def score(t: Any, h: Any, j: Any) -> Any:
        """The (soft-capped) score, _NEG where the key is not visible."""
        s = dot[t, h, j]
        if softcap:
            e = fast_exp(s * f32(2.0 / softcap))
            s = f32(softcap) * (f32(1.0) - f32(2.0) / (f32(1.0) + e))
        return tirx.Select(visible(t, j), s, f32(_NEG))

    j = te.reduce_axis((0, c_len), name="j")
    top = te.compute((t_len, hq), lambda t, h: te.max(score(t, h, j), axis=j), name="top")

    def prob(t: Any, h: Any, jj: Any) -> Any:
        """exp(score - max) of a visible key, 0 otherwise."""
        return tirx.Select(visible(t, jj), fast_exp(score(t, h, jj) - top[t, h]), f32(0.0))

    j2 = te.reduce_axis((0, c_len), name="j2")
    total = te.compute((t_len, hq), lambda t, h: te.sum(prob(t, h, j2), axis=j2), name="total")
    j3 = te.reduce_axis((0, c_len), name="j3")
    acc = te.compute((t_len, hq, d), lambda t, h, c: te.sum(
        prob(t, h, j3) * widen(vc[slot[t], j3, h // group, c], kv_dtype), axis=j3), name="acc")
    out = te.compute((t_len, hq * d), lambda t, c: acc[t, c // d, c % d] / total[t, c // d], name="out")
    return schedule_gpu(te.create_prim_func([q, kc, vc, pos, slot, *tables, out]), knobs)


def kv_write_func(hk: int, d: int, rot: int = 0, table: tuple[int, int] = (1, 1), packed_q_heads: int = 0,
                  kv_dtype: str = "float32") -> PrimFunc:
    """The PrimFunc kv_write(k_cur, v_cur, pos, slot, [rope_pos, sin, cos,] k_cache, v_cache), in place: k rotated
    first when rot > 0 (tables of shape `table`), both cast to `kv_dtype`; with packed_q_heads = Hq both inputs are
    the packed qkv [T, (Hq + 2 Hk) D]. One block per token, its threads over the Hk * D elements."""
    from tvm import tirx
    from tvm.script import tirx as T

    t_len, s_len, c_len = (tirx.Var(name, "int64") for name in ("T", "S", "C"))
    rows, cols = table
    kv_rows = packed_q_heads + 2 * hk if packed_q_heads else hk
    k0, v0 = (packed_q_heads, packed_q_heads + hk) if packed_q_heads else (0, 0)
    kv_shape = (t_len, kv_rows * d) if packed_q_heads else (t_len, hk, d)  # the packed qkv value is 2-D
    threads = min(_WRITE_THREADS, hk * d)
    steps = -(-hk * d // threads)

    def key(k_cur: Any, t: Any, h: Any, i: Any, p: Any, sin: Any, cos: Any) -> Any:
        """The key element stored at (h, i): rotated when RoPE is fused in."""
        def load(buf: Any, *index: Any) -> Any:
            """buf[index] as an expression (TVMScript hands buffers to Python functions unindexed)."""
            return tirx.BufferLoad(buf, list(index))

        if not rot:
            return load(k_cur, t, k0 + h, i)
        return rope_value(lambda tt, hh, ii: load(k_cur, tt, k0 + hh, ii), t, h, i, p,
                          lambda a, b: load(sin, a, b), lambda a, b: load(cos, a, b), rot)

    @T.macro
    def write(k_in, v_in, pos, slot, rope_pos, sin, cos, k_cache, v_cache):
        k_cur = T.decl_buffer((t_len, kv_rows, d), "float32", data=k_in.data)
        v_cur = T.decl_buffer((t_len, kv_rows, d), "float32", data=v_in.data)
        for t in T.thread_binding(t_len, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                for step in range(steps):
                    if step * threads + tx < hk * d:
                        k_cache[slot[t], pos[t], (step * threads + tx) // d, (step * threads + tx) % d] = narrow(
                            key(k_cur, t, (step * threads + tx) // d, (step * threads + tx) % d, rope_pos[t], sin, cos),
                            kv_dtype)
                        v_cache[slot[t], pos[t], (step * threads + tx) // d, (step * threads + tx) % d] = narrow(
                            v_cur[t, v0 + (step * threads + tx) // d, (step * threads + tx) % d], kv_dtype)

    if rot:
        @T.prim_func
        def kv_write_rope(k_arg: T.handle, v_arg: T.handle, pos: T.Buffer((t_len,), "int32"),
                          slot: T.Buffer((t_len,), "int32"), rope_pos: T.Buffer((t_len,), "int32"),
                          sin: T.Buffer((rows, cols), "float32"), cos: T.Buffer((rows, cols), "float32"),
                          k_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype),
                          v_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype)):
            T.func_attr({"tirx.noalias": True})
            write(T.match_buffer(k_arg, kv_shape, "float32"), T.match_buffer(v_arg, kv_shape, "float32"), pos, slot,
                  rope_pos, sin, cos, k_cache, v_cache)

        return kv_write_rope

    @T.prim_func
    def kv_write(k_arg: T.handle, v_arg: T.handle, pos: T.Buffer((t_len,), "int32"),
                 slot: T.Buffer((t_len,), "int32"), k_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype),
                 v_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype)):
        T.func_attr({"tirx.noalias": True})
        write(T.match_buffer(k_arg, kv_shape, "float32"), T.match_buffer(v_arg, kv_shape, "float32"), pos, slot,
              pos, k_cache, k_cache, k_cache, v_cache)  # no RoPE: the tables are never read

    return kv_write


def _geometry(req: LowerRequest) -> tuple[int, int, int, tuple[str, str, str]]:
    """(Hq, Hk, D, the ports holding q, the step's k and v) of a FusedAttention or QKVAttention node."""
    if req.op == "QKVAttention":
        hq, hk = req.attr["numHeads"], req.attr["numKVHeads"]
        return hq, hk, req.types["qkv"].shape[1] // (hq + 2 * hk), ("qkv", "qkv", "qkv")
    return req.types["q"].shape[1], req.types["curk"].shape[1], req.types["q"].shape[2], ("q", "curk", "curv")


def lower_attention(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """The KV-cache write of this step's k/v, then causal (windowed, soft-capped) attention over the cache;
    QKVAttention reads q, k and v from the one packed projection."""
    hq, hk, d, (q, k, v) = _geometry(req)
    a = req.attr
    rot = a.get("rotaryDim") or 0
    table = tuple(req.types["sin"].shape) if rot else (1, 1)
    extra = ("positionIds", "sin", "cos") if rot else ()
    dtype = node_kv_dtype(a)
    write = Kernel(kv_write_func(hk, d, rot, table, hq if q == k else 0, dtype),
                   (k, v, "positions", "slots", *extra, "kcache", "vcache"))
    func = attention_func(hq, hk, d, a["scale"], a.get("window") or 0, a.get("softcap") or 0.0,
                          (rot, *table) if rot else None, q == k, knobs, dtype)
    return Kernel(func, (q, "kcache", "vcache", "positions", "slots", *extra, "out"), before=(write,))


for _op in ("FusedAttention", "QKVAttention"):
    lowering(_op, target="cuda", knobs=KNOBS)(lower_attention)
