"""Shared CPU schedules for the row-shaped kernels (elementwise, norms, RoPE, gathers, shape ops).

Every kernel here computes an output whose first dims are "rows" (T tokens, B sequences, heads...)
and whose remaining dims are static. The schedule parallelizes the outer row loop (in the
large-T variant), fuses the static dims into one inner loop and splits it by the vector width
(8 float32 lanes = one AVX2 register, or the largest power of two that divides the row). The row
length is static, so the vector loop never needs a tail and a symbolic T never needs a guard.
Regions of a row computed by different formulas (Cat's two inputs, RoPE's halves) are split apart
with `loop_partition` after the vector split, so each part's condition folds away and vectorizes.

A parallel launch costs 2.5 us or more on TVM's thread pool (much more when the cores are busy),
far more than one row of an elementwise op (0.05-0.5 us at hidden 576), so each kernel comes in
two variants: serial for small T (decode) and row-parallel from `large_from` tokens on (prefill);
the executor picks the parallel one when T >= large_from.

Knobs (ROW_KNOBS, REDUCE_KNOBS): the vector width, the parallel threshold, a reduction's partial sums.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from graphllm.codegen.knobs import Knob
from graphllm.codegen.lower import Kernel, LowerRequest, Symbols
from graphllm.dsl.types import TensorType

VECTOR_LANES = 8  # float32 lanes of an AVX2 register
LANES_KNOB = Knob("vector_lanes", (4, 8, 16), VECTOR_LANES,
                  "widest float32 vector of a row loop (8: one AVX2 register; a row length without that factor gets less)")
PARALLEL_KNOB = Knob("parallel_min_elems", (4096, 8192, 16384, 32768, 65536, 131072), 32768,
                     "output elements per call from which the row-parallel variant runs (a launch costs ~2.5 us)")
SERIAL_ROW_KNOBS = (LANES_KNOB,)  # row kernels without a parallel variant
ROW_KNOBS = (LANES_KNOB, PARALLEL_KNOB)
REDUCE_KNOBS = (*ROW_KNOBS, Knob("reduce_lanes", (8, 16, 32, 64), 32,
                                 "partial sums of a row reduction (32: 4 registers, 4 independent add chains)"))


def lanes(*sizes: int, widest: int = VECTOR_LANES) -> int:
    """Return the widest power of two <= `widest` dividing every size (the tail-free vector width)."""
    width = widest
    while any(s % width for s in sizes):
        width //= 2
    return width


def row_kernel(
    req: LowerRequest,
    args: Sequence[tuple[str, TensorType]],
    body: Callable[..., Any],
    knobs: Mapping[str, Any],
    *,
    axis: int = 1,
    cuts: Sequence[int] = (),
    repeats: int = 1,
    reductions: Sequence[str] = (),
    parallel: bool = True,
) -> Kernel:
    """Lower out = body(*placeholders) (the TE tensor named "out") to a scheduled row Kernel.

    `args` are the PrimFunc's inputs (parameter name, type), in order; "out" comes last.
    With `reductions` (names of row-sum stages) the norm schedule is used, otherwise every stage
    is inlined into "out" and `schedule_rows` (with `axis`, `cuts`, `repeats`) schedules it.
    With `parallel`, the Kernel gets a row-parallel variant used from `large_from` tokens on.
    `knobs` holds the values of ROW_KNOBS (REDUCE_KNOBS with `reductions`; SERIAL_ROW_KNOBS without `parallel`).
    """

    def make(in_parallel: bool) -> Any:
        """Build the TE graph and schedule it, serial or row-parallel."""
        import tvm
        from tvm import te

        symbols = Symbols()
        tensors = [symbols.placeholder(t, name) for name, t in args]
        sch = tvm.s_tir.Schedule(te.create_prim_func([*tensors, body(*tensors)]))
        if reductions:
            schedule_row_reductions(sch, "out", reductions, axis, parallel=in_parallel,
                                    widest=knobs["vector_lanes"], reduce_lanes=knobs["reduce_lanes"])
        else:
            _inline_into(sch, "out")
            schedule_rows(sch, sch.get_sblock("out"), axis, parallel=in_parallel, cuts=cuts, repeats=repeats,
                          widest=knobs["vector_lanes"])
        return sch.mod["main"]

    params = (*(name for name, _ in args), "out")
    if not parallel:
        return Kernel(func=make(False), params=params)
    return Kernel(func=make(False), params=params, large=make(True),
                  large_from=parallel_from(knobs, math.prod(int(d) for d in req.output.shape[1:])))


def parallel_from(knobs: Mapping[str, Any], per_token: int) -> int:
    """The token count from which the row-parallel variant runs: `parallel_min_elems` output elements, at least 2 tokens."""
    return max(2, -(-knobs["parallel_min_elems"] // max(1, per_token)))


def _inline_into(sch: Any, out: str) -> None:
    """Inline every block but `out` (elementwise stages such as topi.fast_exp) into its consumers."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint != out:
            sch.compute_inline(block)


def schedule_rows(
    sch: Any,
    block: Any,
    axis: int,
    *,
    parallel: bool,
    widest: int,
    cuts: Sequence[int] = (),
    repeats: int = 1,
) -> Any:
    """Vectorize the loops from `axis` on (fused, at most `widest` lanes) and parallelize the first; return the last row loop.

    The row loops (before `axis`) stay nested rather than fused: fusing T (int64) with a static
    dim (int32) makes index casts that rfactor-ed reductions cannot be computed under.
    `cuts` are positions in the fused inner loop where the formula changes: the loop is
    partitioned there (each cut must be a multiple of the vector width, which `lanes` ensures).
    `repeats` splits the inner loop into that many equal tiles first (Repeat's copies), so the
    index inside a tile is free of a modulo.
    """
    loops = sch.get_loops(block)
    outer, inner = loops[:axis], loops[axis:]
    extent = math.prod(int(sch.get(loop).extent) for loop in inner) // repeats
    if not outer:
        outer = [sch.add_unit_loop(loops[0])]
    if inner:
        vec = sch.fuse(*inner)
        if repeats > 1:
            _, vec = sch.split(vec, [repeats, extent])
        width = lanes(extent, *cuts, widest=widest)
        v_outer, v_inner = sch.split(vec, [None, width])
        if cuts:
            bounds = [0, *cuts]
            factors = [(hi - lo) // width for lo, hi in itertools.pairwise(bounds)]
            for part in sch.loop_partition(v_outer, [*factors, None]):
                (part_block,) = sch.get_child_blocks(part)
                _vectorize(sch, sch.get_loops(part_block)[-1], width)
        else:
            _vectorize(sch, v_inner, width)
    if parallel:
        sch.parallel(outer[0])
    return outer[-1]


def _vectorize(sch: Any, loop: Any, width: int) -> None:
    """Vectorize `loop` unless it has a single lane (a unit loop needs nothing)."""
    if width > 1:
        sch.vectorize(loop)


def schedule_row_reductions(
    sch: Any, out: str, reductions: Sequence[str], axis: int, *, parallel: bool, widest: int, reduce_lanes: int
) -> None:
    """Schedule a row kernel whose per-row statistics are sums over the row (norms).

    Each reduction block is rfactor-ed into `reduce_lanes` (or fewer) vector partial sums (a row
    length with no factor of two keeps a scalar sum). rfactor must come before compute_at (the
    other order fails inside TVM), then every intermediate block is computed inside the output's
    innermost row loop (one row per task, statistics on the stack) and the output is vectorized
    by `schedule_rows`.
    """
    factored = []
    for name in reductions:
        block = sch.get_sblock(name)
        k = sch.get_loops(block)[-1]
        extent = int(sch.get(k).extent)
        width = lanes(extent, widest=reduce_lanes)
        if width == extent:  # keep two or more outer steps: a unit k_outer loop cannot be reordered
            width //= 2
        if width == 1:
            continue
        _, k_lane = sch.split(k, [None, width])
        factored.append(sch.rfactor(k_lane, len(sch.get(block).iter_vars) - 1))
    row = schedule_rows(sch, sch.get_sblock(out), axis, parallel=parallel, widest=widest)
    for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))):
        if sch.get(block).name_hint != out:
            sch.compute_at(block, row)
    for rf in factored:
        lane, k_outer = sch.get_loops(rf)[-2:]  # compute_at orders the rf loops lane, then k
        sch.reorder(k_outer, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(rf, k_outer)
        sch.vectorize(sch.get_loops(init)[-1])
