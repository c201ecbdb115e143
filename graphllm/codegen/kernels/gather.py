"""Row gathers: Embedding (token ids -> weight rows) and SplitLastTokenStates (last row of each sequence).

Both copy whole static-length rows picked by an int32 index, with the row copy vectorized.
"""

from __future__ import annotations

from typing import Any

from graphllm.codegen.kernels.sched import require_float32, row_kernel
from graphllm.codegen.lower import Kernel, LowerRequest, lowering


def _gather_rows(table: Any, index: Any) -> Any:
    """Return out[b, ...] = table[index[b], ...], the TE row gather."""
    from tvm import te

    shape = (index.shape[0], *table.shape[1:])
    return te.compute(shape, lambda b, *rest: table[(index[b], *rest)], name="out")


@lowering("Embedding")
def lower_embedding(req: LowerRequest) -> Kernel:
    """out[t] = weight[input[t]] for a float32 or block-quantized weight [V, H] (ids are not range-checked)."""
    if req.types["weight"].quantized:  # rows decoded from the packed blocks (shared with a tied lm_head)
        from graphllm.codegen.kernels.qlinear import lower_qembedding
        return lower_qembedding(req)
    require_float32(req, "weight")
    args = [(p, req.types[p]) for p in ("input", "weight")]
    return row_kernel(req, args, lambda ids, w: _gather_rows(w, ids))


@lowering("SplitLastTokenStates")
def lower_split_last_token_states(req: LowerRequest) -> Kernel:
    """out[b] = input[last_rows[b]]: the executor's `last_rows` extra takes the seqLens port's place.

    Serial only: it copies B rows (one per sequence), too little work to pay for a parallel launch.
    """
    args = [("input", req.types["input"]), ("last_rows", req.types["seqLens"])]
    return row_kernel(req, args, lambda x, rows: _gather_rows(x, rows), parallel=False)
