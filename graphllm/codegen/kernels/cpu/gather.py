"""Row gathers: Embedding (token ids -> weight rows) and SplitLastTokenStates (last row of each sequence).

Both copy whole static-length rows picked by an int32 index, with the row copy vectorized.
A float16/bfloat16 Embedding table is read from the Linear kernels' packed copy ([V/nb, H, nb],
the one a tied lm_head reads too), each element widened as the Linear kernels widen it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphllm.codegen.kernels.common import widen
from graphllm.codegen.kernels.cpu.kquant import lower_kquant_embedding
from graphllm.codegen.kernels.cpu.qlinear import lower_qembedding
from graphllm.codegen.kernels.cpu.sched import ROW_KNOBS, SERIAL_ROW_KNOBS, parallel_from, row_kernel, schedule_rows
from graphllm.codegen.kernels.stages import gather_rows
from graphllm.codegen.knobs import Knob
from graphllm.codegen.lower import Kernel, LowerRequest, Symbols, lowering, require_float32
from graphllm.dsl.qformats import qformat
from graphllm.layouts import STORAGE, pack_block, packer_name


def _packed_embedding(req: LowerRequest, parallel: bool, lanes: int) -> Any:
    """Return the PrimFunc (ids, w_packed, out): out[t, h] = widen(w[ids[t] // nb, h, ids[t] % nb])."""
    import tvm
    from tvm import te

    wt = req.types["weight"]
    vocab, hidden = wt.shape
    nb = pack_block(vocab)
    ids = Symbols().placeholder(req.types["input"], "ids")
    w = te.placeholder((vocab // nb, hidden, nb), STORAGE[wt.dtype], name="w")
    out = te.compute((ids.shape[0], hidden),
                     lambda t, h: widen(w[ids[t] // nb, h, ids[t] % nb], wt.dtype).astype(req.output.dtype),
                     name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([ids, w, out]))
    schedule_rows(sch, sch.get_sblock("out"), 1, parallel=parallel, widest=lanes)
    return sch.mod["main"]


def embedding_knobs(req: LowerRequest) -> tuple[Knob, ...]:
    """A float table's row kernels have the row knobs; a block-quantized table's serial decode has none."""
    return () if req.types["weight"].quantized else ROW_KNOBS


@lowering("Embedding", knobs=embedding_knobs)
def lower_embedding(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out[t] = weight[input[t]] for a float32, float16, bfloat16 or block-quantized weight [V, H] (ids unchecked)."""
    wt = req.types["weight"]
    if wt.quantized:  # rows decoded from the packed blocks (shared with a tied lm_head)
        return (lower_kquant_embedding if qformat(wt.dtype).sub_blocks else lower_qembedding)(req)
    if wt.dtype in STORAGE and wt.dtype != "float32":
        if req.types["input"].rank != 1:
            raise NotImplementedError(f"a 16-bit Embedding needs ids [T], got {req.types['input']}")
        lanes = knobs["vector_lanes"]
        return Kernel(_packed_embedding(req, False, lanes), ("input", "weight", "out"),
                      large=_packed_embedding(req, True, lanes), large_from=parallel_from(knobs, wt.shape[1]),
                      packs={"weight": packer_name(wt.dtype)})
    require_float32(req, "weight")
    args = [(p, req.types[p]) for p in ("input", "weight")]
    return row_kernel(req, args, lambda ids, w: gather_rows(w, ids), knobs)


@lowering("SplitLastTokenStates", knobs=SERIAL_ROW_KNOBS)
def lower_split_last_token_states(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out[b] = input[last_rows[b]]: the executor's `last_rows` extra takes the seqLens port's place.

    Serial only: it copies B rows (one per sequence), too little work to pay for a parallel launch.
    """
    args = [("input", req.types["input"]), ("last_rows", req.types["seqLens"])]
    return row_kernel(req, args, lambda x, rows: gather_rows(x, rows), knobs, parallel=False)
