"""The generic CUDA schedule of a TE PrimFunc: every stage bound to GPU threads, correct for any op.

Elementwise stages are inlined into their consumers. Each remaining stage is one kernel launch:
- a reduction (norm statistics, a Linear's accumulator, attention's scores and sums): its outputs are
  spread over thread blocks, `rows` outputs per block (threadIdx.y), and each output's reduction
  over `lanes` threads (threadIdx.x: a warp-shuffle all-reduce when lanes is 32); a lone
  elementwise consumer (the Linear's epilogue, the norm's scaled output) runs in the same launch,
  right after the reduction, on the reduced value held in registers;
- an elementwise stage: its output elements fused into one loop of `threads` threads per block.
Symbolic T only changes the grid size; tails are predicated. This is the correct baseline of the
design (the dlight rules reject these mixed int32/int64 index PrimFuncs); hand schedules for the
dequantizing GEMV, the prefill GEMM and decode attention are to replace it where it is slow.
Knobs (KNOBS): threads per elementwise block, reduction lanes and outputs per reduction block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from graphllm.codegen.knobs import Knob
from graphllm.codegen.lower import Kernel, LowerRequest, Symbols
from graphllm.dsl.types import TensorType

KNOBS = (
    Knob("threads", (64, 128, 256, 512, 1024), 256, "threads per block of an elementwise launch"),
    Knob("lanes", (8, 16, 32, 64, 128), 32, "threads reducing one output (32: one warp, a shuffle all-reduce)"),
    Knob("rows", (1, 2, 4, 8), 4, "outputs per block of a reduction launch (threadIdx.y)"),
)
_REDUCE = 2  # tirx IterVar type of a reduction axis


def _is_reduction(sch: Any, block: Any) -> bool:
    """Whether a block reduces (has a reduction iter var)."""
    return any(int(iv.iter_type) == _REDUCE for iv in sch.get(block).iter_vars)


def _fused(sch: Any, loops: Sequence[Any]) -> Any:
    """The loops fused into one (a single loop as it is)."""
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


def schedule_gpu(func: Any, knobs: Mapping[str, Any]) -> Any:
    """Bind every stage of an unscheduled TE PrimFunc to GPU threads (the module doc); return the PrimFunc."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if not _is_reduction(sch, block) and sch.get_consumers(block):
            sch.compute_inline(block)
    placed: set[str] = set()
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint in placed:
            continue
        if _is_reduction(sch, block):
            placed |= _schedule_reduction(sch, block, knobs)
        else:
            outer, inner = sch.split(_fused(sch, sch.get_loops(block)), [None, knobs["threads"]])
            sch.bind(outer, "blockIdx.x")
            sch.bind(inner, "threadIdx.x")
    return sch.mod["main"]


def _schedule_reduction(sch: Any, block: Any, knobs: Mapping[str, Any]) -> set[str]:
    """Schedule one reduction launch (with its lone elementwise consumer); return the consumer's name if placed."""
    from tvm.s_tir.schedule import ScheduleError

    loops, ivs = sch.get_loops(block), sch.get(block).iter_vars
    spatial = _fused(sch, [lp for lp, iv in zip(loops, ivs) if int(iv.iter_type) != _REDUCE])
    reduce = _fused(sch, [lp for lp, iv in zip(loops, ivs) if int(iv.iter_type) == _REDUCE])
    block_loop, row = sch.split(spatial, [None, knobs["rows"]])
    serial, lane = sch.split(reduce, [None, knobs["lanes"]])
    sch.reorder(block_loop, row, serial, lane)
    placed = set()
    consumers = sch.get_consumers(block)
    if len(consumers) == 1 and not _is_reduction(sch, consumers[0]):
        try:  # refused when the consumer reads another launch's result too (LayerNorm's mean)
            sch.reverse_compute_at(consumers[0], row)
        except ScheduleError:
            pass
        else:
            sch.set_scope(block, 0, "local")
            placed.add(sch.get(consumers[0]).name_hint)
    sch.bind(block_loop, "blockIdx.x")
    sch.bind(row, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")
    return placed


def te_kernel(args: Sequence[tuple[str, TensorType]], body: Callable[..., Any], knobs: Mapping[str, Any],
              **kernel: Any) -> Kernel:
    """Lower out = body(*placeholders) (args: parameter name and type, in order; "out" last) with `schedule_gpu`."""
    from tvm import te

    symbols = Symbols()
    tensors = [symbols.placeholder(t, name) for name, t in args]
    func = schedule_gpu(te.create_prim_func([*tensors, body(*tensors)]), knobs)
    return Kernel(func=func, params=(*(name for name, _ in args), "out"), **kernel)


def port_kernel(req: LowerRequest, ports: Sequence[str], body: Callable[..., Any], knobs: Mapping[str, Any],
                **kernel: Any) -> Kernel:
    """`te_kernel` over the node's input ports (parameters named as the ports)."""
    return te_kernel([(p, req.types[p]) for p in ports], body, knobs, **kernel)
