"""Causal GQA attention over a contiguous float16 or float32 KV cache, and the cache write, as TIR PrimFuncs.

Layouts (T tokens, S sequence slots and C context positions are symbolic int64 dims):
  q [T, Hq, D], k_cache / v_cache [S, C, Hk, D] of the node's kvDtype, pos int32 [T], slot int32 [T],
  out [T, Hq*D]. A float16 cache is written rounded (to nearest even) and read widened to float32 in the
  vectorized loads (F16C's vcvtph2ps on x86), so all arithmetic stays float32.
Query row t attends to positions 0..pos[t] of cache slot slot[t] (pos[t]-window+1..pos[t] with a
sliding window); query head h reads kv head h // (Hq / Hk). With soft-capping, each scaled score s
becomes cap * tanh(s / cap) before the softmax, as in the reference. The softmax is computed online (flash style, running max subtracted) over blocks
of `key_block` keys, so any context length runs in fixed-size local buffers.

The loop nests are written directly in TIR rather than scheduled from TE, because the key loop's
extent depends on pos[t], which block-based schedules cannot express. The schedule is in the loops:
- one parallel task per (token, key split); a task runs every head of its token over its key range,
  so it streams the [keys, Hk, D] rows of the cache contiguously (each K/V byte is read once, and
  the Hq/Hk query heads of a group reuse it from L1);
- decode (few tokens): each token's keys are split into threads // T ranges (flash-decoding; the
  executor passes its thread count: 8 splits on 2 threads ran 1.5-1.7x slower than 2 at 64-256 keys;
  the `key_splits` knob may fix the count instead), combined afterwards, so both threads work on one token;
- prefill: tokens are visited in zigzag order (0, T-1, 1, T-2, ...) so the pool's contiguous static
  chunks get equal causal work;
- D is vectorized (8 lanes); `key_unroll` keys' dot products are interleaved (independent FMA
  chains); exp is a vectorizable polynomial (`fast_exp`) instead of a libm call per lane.
Knobs (KNOBS): key block, key unroll, the key-split policy, the task cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from graphllm.codegen.kernels.common import fast_exp, narrow, rope_rotate, widen
from graphllm.codegen.kernels.cpu import sched
from graphllm.codegen.knobs import Knob, defaults
from graphllm.codegen.lower import Kernel, LowerRequest, lowering
from graphllm.dsl.ops import kv_dtype as node_kv_dtype

if TYPE_CHECKING:
    from tvm.tirx import Expr, PrimFunc

KNOBS = (
    Knob("key_block", (8, 16, 32, 64), 32, "keys per online-softmax block (scores kept in a local buffer)"),
    Knob("key_unroll", (1, 2, 4, 8), 4, "keys whose dot products are interleaved (independent FMA chains)"),
    Knob("key_splits", ("threads", 1, 2, 4, 8), "threads",
         "key ranges per token (of at most max_tasks // T): the executor's thread count (flash-decoding), or fixed"),
    Knob("max_tasks", (4, 8, 16, 32), 16, "at most this many (token, key split) tasks when a step has fewer tokens than that"),
)
DEFAULTS = defaults(KNOBS)
_NEG = -3.0e38  # "minus infinity" that stays finite through subtraction


def attention_func(num_q_heads: int, num_kv_heads: int, head_dim: int, scale: float, window: int = 0,
                   softcap: float = 0.0, rope: tuple[int, int, int] | None = None, packed: bool = False,
                   knobs: Mapping[str, Any] = DEFAULTS, kv_dtype: str = "float32") -> PrimFunc:
    """Return the PrimFunc attention(q, k_cache, v_cache, pos, slot, threads, [rope_pos, sin, cos,] out) of the module doc.

    window > 0 limits each query to its last `window` keys; softcap > 0 soft-caps the scores;
    rope = (rotaryDim, table rows, table cols) rotates each query row as it is loaded (fuse_rope);
    packed: q is the packed qkv [T, Hq + 2 Hk, D] (QKVAttention), whose first Hq heads are the queries.
    `knobs` holds the values of KNOBS; `kv_dtype` is the caches' element type.
    """
    from tvm import tirx
    from tvm.script import tirx as T

    def key_start(n_keys: Expr) -> Expr:
        """Return the first key a query with n_keys visible keys attends to."""
        return T.max(n_keys - T.int64(window), T.int64(0)) if window else T.int64(0)

    def capped(s: Expr) -> Expr:
        """Return softcap * tanh(s / softcap), tanh as 1 - 2 / (1 + exp(2x))."""
        e = fast_exp(s * T.float32(2.0 / softcap))
        return T.float32(softcap) * (T.float32(1) - T.float32(2) / (T.float32(1) + e))

    def split_budget(threads: Any) -> Expr:
        """(token, key split) tasks a step may spread its tokens over: the thread count or the fixed split, capped."""
        splits = knobs["key_splits"]
        return T.min(threads[0] if splits == "threads" else T.int32(splits), max_tasks)

    hq, hk, d = num_q_heads, num_kv_heads, head_dim
    if hq % hk:
        raise ValueError(f"query heads {hq} must be a multiple of kv heads {hk}")
    group, lanes, kb, unroll = hq // hk, sched.lanes(d), knobs["key_block"], knobs["key_unroll"]
    max_tasks = knobs["max_tasks"]
    has_cap = bool(softcap)
    chunks = d // lanes
    scale = float(scale)
    t_len, s_len, c_len = (tirx.Var(name, "int64") for name in ("T", "S", "C"))
    rot, rows, cols = rope or (0, 1, 1)
    has_rope = bool(rot)
    q_rows = hq + 2 * hk if packed else hq
    q_shape = (t_len, q_rows * d) if packed else (t_len, hq, d)  # the packed qkv value is 2-D

    @T.macro
    def attend(q, k_cache, v_cache, pos, slot, threads, rope_pos, sin, cos, out):
        n_split = T.max(T.int64(1), T.Cast("int64", split_budget(threads)) // t_len)
        # Partial results of each (token, head, split): acc[d], running max, running sum. Splits
        # exist only while t_len * n_split <= max_tasks, hence the fixed size.
        partial = T.alloc_buffer((max_tasks * hq * (d + 2),), "float32")
        for task in T.parallel(t_len * n_split):
            u = task // n_split
            sp = task % n_split
            t = T.Select(u % 2 == 0, u // 2, t_len - 1 - u // 2)  # zigzag over tokens
            s = T.Cast("int64", slot[t])
            n_keys = T.Cast("int64", pos[t]) + 1
            lo = key_start(n_keys)
            per_split = (n_keys - lo + n_split * kb - 1) // (n_split * kb) * kb
            k_begin = T.min(lo + sp * per_split, n_keys)
            k_end = T.min(k_begin + per_split, n_keys)
            qs = T.alloc_local((hq * d,), "float32")
            acc = T.alloc_local((hq * d,), "float32")
            run_max = T.alloc_local((hq,), "float32")
            run_sum = T.alloc_local((hq,), "float32")
            part = T.alloc_local((unroll * lanes,), "float32")
            score = T.alloc_local((kb,), "float32")
            tmp = T.alloc_local((2,), "float32")  # block max, rescale factor
            for jj in T.vectorized(kb):
                score[jj] = T.float32(0)
            for h in range(hq):
                if has_rope:  # a Python bool: RoPE (pairs i, i + rot) is emitted only when fused in
                    for i in T.vectorized(rot):
                        qs[h * d + i] = rope_rotate(q[t, h, i], q[t, h, i + rot], cos[rope_pos[t], i],
                                                    sin[rope_pos[t], i], False) * T.float32(scale)
                    for i in T.vectorized(rot):
                        qs[h * d + rot + i] = rope_rotate(q[t, h, i + rot], q[t, h, i], cos[rope_pos[t], i],
                                                          sin[rope_pos[t], i], True) * T.float32(scale)
                    for i in range(d - 2 * rot):
                        qs[h * d + 2 * rot + i] = q[t, h, 2 * rot + i] * T.float32(scale)
                else:
                    for i in T.vectorized(d):
                        qs[h * d + i] = q[t, h, i] * T.float32(scale)
                for i in T.vectorized(d):
                    acc[h * d + i] = T.float32(0)
                run_max[h] = T.float32(_NEG)
                run_sum[h] = T.float32(0)
            for jb in range((k_end - k_begin + kb - 1) // kb):
                j0 = k_begin + jb * kb
                nb = T.min(T.int64(kb), k_end - j0)
                for h in range(hq):
                    kvh = h // group
                    # scores of keys j0 .. j0+nb for head h, `unroll` keys at a time
                    for jq in range(nb // unroll):
                        for u2, i in T.grid(unroll, lanes):
                            part[u2 * lanes + i] = T.float32(0)
                        for c in T.unroll(chunks):
                            for u2 in T.unroll(unroll):
                                for i in T.vectorized(lanes):
                                    part[u2 * lanes + i] = (
                                        part[u2 * lanes + i]
                                        + qs[h * d + c * lanes + i]
                                        * widen(k_cache[s, j0 + jq * unroll + u2, kvh, c * lanes + i], kv_dtype)
                                    )
                        for u2 in T.unroll(unroll):
                            score[jq * unroll + u2] = T.float32(0)
                            for i in T.unroll(lanes):
                                score[jq * unroll + u2] = score[jq * unroll + u2] + part[u2 * lanes + i]
                    for jj in range(nb // unroll * unroll, nb):
                        for i in T.vectorized(lanes):
                            part[i] = T.float32(0)
                        for c in T.unroll(chunks):
                            for i in T.vectorized(lanes):
                                part[i] = part[i] + qs[h * d + c * lanes + i] * widen(
                                    k_cache[s, j0 + jj, kvh, c * lanes + i], kv_dtype)
                        score[jj] = T.float32(0)
                        for i in T.unroll(lanes):
                            score[jj] = score[jj] + part[i]
                    if has_cap:  # a Python bool: the loop exists only with soft-capping
                        for jj in range(nb):
                            score[jj] = capped(score[jj])
                    # online softmax: new running max, rescale, probabilities, weighted V
                    tmp[0] = run_max[h]
                    for jj in range(nb):
                        tmp[0] = T.max(tmp[0], score[jj])
                    tmp[1] = fast_exp(run_max[h] - tmp[0])
                    run_max[h] = tmp[0]
                    for jj in T.vectorized(kb):  # lanes >= nb are computed and never used
                        score[jj] = fast_exp(score[jj] - tmp[0])
                    run_sum[h] = run_sum[h] * tmp[1]
                    for jj in range(nb):
                        run_sum[h] = run_sum[h] + score[jj]
                    for i in T.vectorized(d):
                        acc[h * d + i] = acc[h * d + i] * tmp[1]
                    for jj in range(nb):
                        for i in T.vectorized(d):
                            acc[h * d + i] = acc[h * d + i] + score[jj] * widen(v_cache[s, j0 + jj, kvh, i], kv_dtype)
            for h in range(hq):
                if n_split == 1:
                    tmp[1] = T.float32(1) / run_sum[h]
                    for i in T.vectorized(d):
                        out[t, h * d + i] = acc[h * d + i] * tmp[1]
                else:
                    base = ((t * hq + h) * n_split + sp) * (d + 2)
                    for i in T.vectorized(d):
                        partial[base + i] = acc[h * d + i]
                    partial[base + d] = run_max[h]
                    partial[base + d + 1] = run_sum[h]
        if n_split > 1:  # combine the key splits (a few tokens only, serial)
            for th in range(t_len * hq):
                comb = T.alloc_local((d,), "float32")
                stats = T.alloc_local((3,), "float32")  # max, sum, weight
                stats[0] = T.float32(_NEG)
                for sp in range(n_split):
                    stats[0] = T.max(stats[0], partial[(th * n_split + sp) * (d + 2) + d])
                stats[1] = T.float32(0)
                for i in T.vectorized(d):
                    comb[i] = T.float32(0)
                for sp in range(n_split):
                    base = (th * n_split + sp) * (d + 2)
                    stats[2] = fast_exp(partial[base + d] - stats[0])
                    stats[1] = stats[1] + partial[base + d + 1] * stats[2]
                    for i in T.vectorized(d):
                        comb[i] = comb[i] + partial[base + i] * stats[2]
                stats[2] = T.float32(1) / stats[1]
                for i in T.vectorized(d):
                    out[th // hq, th % hq * d + i] = comb[i] * stats[2]

    @T.prim_func
    def attention(
        q_arg: T.handle,
        k_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype),
        v_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype),
        pos: T.Buffer((t_len,), "int32"),
        slot: T.Buffer((t_len,), "int32"),
        threads: T.Buffer((1,), "int32"),
        rope_pos: T.Buffer((t_len,), "int32"),
        sin: T.Buffer((rows, cols), "float32"),
        cos: T.Buffer((rows, cols), "float32"),
        out: T.Buffer((t_len, hq * d), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        q = T.match_buffer(q_arg, q_shape, "float32")
        attend(T.decl_buffer((t_len, q_rows, d), "float32", data=q.data), k_cache, v_cache, pos, slot, threads,
               rope_pos, sin, cos, out)

    return attention if has_rope else _without_params(attention, ROPE_PARAMS)


ROPE_PARAMS = ("rope_pos", "sin", "cos")  # parameters a kernel without fused RoPE drops (its body never reads them)


def _without_params(func: PrimFunc, names: tuple[str, ...]) -> PrimFunc:
    """The PrimFunc without the named parameters (which its body does not use): one entry point written for both
    the RoPE-fused and the plain kernel."""
    from tvm import tirx

    keep = [p for p in func.params if p.name not in names]
    return tirx.PrimFunc(keep, func.body, func.ret_type, func.attrs)


def kv_write_func(num_kv_heads: int, head_dim: int, rope: tuple[int, int, int] | None = None,
                  packed_q_heads: int = 0, kv_dtype: str = "float32") -> PrimFunc:
    """Return the PrimFunc kv_write(k_cur, v_cur, pos, slot, [rope_pos, sin, cos,] k_cache, v_cache), in place.

    k_cur, v_cur [T, Hk, D] go to k_cache / v_cache [slot[t], pos[t]] (k rotated first when RoPE
    is fused in), cast to the caches' `kv_dtype`. Serial: a few KB per token cost less than a thread-pool launch. With
    packed_q_heads = Hq, k_cur and v_cur are both the packed qkv [T, Hq + 2 Hk, D] (heads Hq.. and Hq+Hk..).
    """
    from tvm import tirx
    from tvm.script import tirx as T

    hk, d = num_kv_heads, head_dim
    t_len, s_len, c_len = (tirx.Var(name, "int64") for name in ("T", "S", "C"))
    rot, rows, cols = rope or (0, 1, 1)
    kv_rows = packed_q_heads + 2 * hk if packed_q_heads else hk
    k0, v0 = (packed_q_heads, packed_q_heads + hk) if packed_q_heads else (0, 0)
    kv_shape = (t_len, kv_rows * d) if packed_q_heads else (t_len, hk, d)  # the packed qkv value is 2-D

    has_rope = bool(rot)

    @T.macro
    def write(k_in, v_in, pos, slot, rope_pos, sin, cos, k_cache, v_cache):
        k_cur = T.decl_buffer((t_len, kv_rows, d), "float32", data=k_in.data)
        v_cur = T.decl_buffer((t_len, kv_rows, d), "float32", data=v_in.data)
        for t, h in T.grid(t_len, hk):
            if has_rope:  # a Python bool: k rotated (pairs i, i + rot) as it is stored
                p = rope_pos[t]
                for i in T.vectorized(rot):
                    k_cache[slot[t], pos[t], h, i] = narrow(rope_rotate(k_cur[t, k0 + h, i], k_cur[t, k0 + h, i + rot],
                                                                        cos[p, i], sin[p, i], False), kv_dtype)
                for i in T.vectorized(rot):
                    k_cache[slot[t], pos[t], h, i + rot] = narrow(rope_rotate(
                        k_cur[t, k0 + h, i + rot], k_cur[t, k0 + h, i], cos[p, i], sin[p, i], True), kv_dtype)
                for i in range(d - 2 * rot):
                    k_cache[slot[t], pos[t], h, i + 2 * rot] = narrow(k_cur[t, k0 + h, i + 2 * rot], kv_dtype)
            else:
                for i in T.vectorized(d):
                    k_cache[slot[t], pos[t], h, i] = narrow(k_cur[t, k0 + h, i], kv_dtype)
            for i in T.vectorized(d):
                v_cache[slot[t], pos[t], h, i] = narrow(v_cur[t, v0 + h, i], kv_dtype)

    @T.prim_func
    def kv_write(
        k_arg: T.handle,
        v_arg: T.handle,
        pos: T.Buffer((t_len,), "int32"),
        slot: T.Buffer((t_len,), "int32"),
        rope_pos: T.Buffer((t_len,), "int32"),
        sin: T.Buffer((rows, cols), "float32"),
        cos: T.Buffer((rows, cols), "float32"),
        k_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype),
        v_cache: T.Buffer((s_len, c_len, hk, d), kv_dtype),
    ):
        T.func_attr({"tirx.noalias": True})
        k_in = T.match_buffer(k_arg, kv_shape, "float32")
        v_in = T.match_buffer(v_arg, kv_shape, "float32")
        write(k_in, v_in, pos, slot, rope_pos, sin, cos, k_cache, v_cache)

    return kv_write if rope else _without_params(kv_write, ROPE_PARAMS)


def _attention_kernel(req: LowerRequest, knobs: Mapping[str, Any], hq: int, hk: int, d: int,
                      ports: tuple[str, str, str]) -> Kernel:
    """The KV-cache write, then the attention; ports name q, curk, curv (all 'qkv' when packed)."""
    attrs = req.attr
    rot = attrs.get("rotaryDim") or 0
    rope = (rot, *req.types["sin"].shape) if rot else None
    tables = ("positionIds", "sin", "cos") if rot else ()
    packed = ports[0] == ports[1]
    dtype = node_kv_dtype(attrs)
    write = Kernel(kv_write_func(hk, d, rope, hq if packed else 0, dtype),
                   (ports[1], ports[2], "positions", "slots", *tables, "kcache", "vcache"))
    func = attention_func(hq, hk, d, attrs["scale"], attrs.get("window") or 0, attrs.get("softcap") or 0.0, rope, packed,
                          knobs, dtype)
    return Kernel(func, (ports[0], "kcache", "vcache", "positions", "slots", "threads", *tables, "out"), before=(write,))


@lowering("FusedAttention", knobs=KNOBS)
def lower_attention(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """The KV-cache write of this step's k/v, then causal (windowed, soft-capped) attention over the cache."""
    _, hq, d = req.types["q"].shape
    return _attention_kernel(req, knobs, hq, req.types["curk"].shape[1], d, ("q", "curk", "curv"))


@lowering("QKVAttention", knobs=KNOBS)
def lower_qkv_attention(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """FusedAttention's kernels reading q, k and v from the one packed projection (no split copies)."""
    hq, hk = req.attr["numHeads"], req.attr["numKVHeads"]
    d = req.types["qkv"].shape[1] // (hq + 2 * hk)
    return _attention_kernel(req, knobs, hq, hk, d, ("qkv", "qkv", "qkv"))
