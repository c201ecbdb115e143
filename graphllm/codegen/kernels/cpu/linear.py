"""float32 Linear y[T, N] = x[T, K] @ W[N, K]^T (+ b[N]) with symbolic T, as TVM PrimFuncs.

Weight layout (`graphllm.layouts.pack_weight`, once at load): HF [N, K] -> [N/nb, K, nb]
(nb = 16 when N allows: two AVX2 vectors), stored as float32, float16 or bfloat16 (weight-only:
16-bit weights are widened to float32 in the inner loop, `vcvtph2ps` for float16, a 16-bit shift
for bfloat16, which is held as its uint16 bits because numpy and DLPack have no bfloat16 array).
One packed copy serves both kernels:
- GEMV (`*_gemv`, T < large_from): per nb-column block, stream its K x nb panel contiguously
  and accumulate nb outputs in vector registers (no horizontal sums); parallel over blocks.
- GEMM (`*_gemm`, T >= large_from): a 6 x 16 register tile (12 ymm accumulators) per
  (row tile, column block), broadcast x[t, k] times the panel row; parallel over blocks.
Both kernels compute into a local accumulator and then write y = acc (+ b) (+ residual) in an
epilogue; a FusedLinear's RMSNorm or Swiglu prologue is a stage "xn" over all tokens that the
accumulator reads instead of x.
The GEMM pads T up to a multiple of its row tile by re-reading the last row (clamped index),
so its inner loop has no predicate; only the epilogue store is guarded.
Knobs (KNOBS): the GEMV/GEMM crossover and the GEMM tile's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from graphllm.codegen.fusion import PLAIN, Fusion
from graphllm.codegen.kernels.cpu import kquant, qlinear
from graphllm.codegen.kernels.cpu.sched import lanes
from graphllm.codegen.kernels.stages import float_weight, linear_func
from graphllm.codegen.knobs import Knob, defaults
from graphllm.codegen.lower import Kernel, LowerRequest, lowering
from graphllm.dsl.qformats import qformat
from graphllm.layouts import STORAGE, pack_block, packer_name

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

KNOBS = (
    Knob("large_from", (1, 2, 3, 4, 6, 8, 16), 3,
         "token count from which the GEMM runs instead of the GEMV (measured crossover with cold weights)"),
    Knob("gemm_rows", (2, 3, 4, 6, 8), 6, "token rows of the GEMM register tile (6 x 16 floats = 12 ymm accumulators)"),
)
DEFAULTS = defaults(KNOBS)


def _linear_prim_func(k: int, n: int, bias: bool, rows: int, dtype: str, fusion: Fusion = PLAIN) -> PrimFunc:
    """Return the unscheduled PrimFunc: [prologue,] accumulator over T padded to `rows`, then the epilogue."""
    return linear_func(k, n, bias, float_weight(k, n, dtype), rows, fusion)


def _schedule(func: PrimFunc, n: int, rows: int, fusion: Fusion = PLAIN) -> PrimFunc:
    """Apply the register-tile schedule (rows x nb accumulators, parallel over column blocks).

    A prologue stage runs first over all tokens (row-parallel in the GEMM), vectorized along K.
    """
    import tvm

    nb = pack_block(n)
    sch = tvm.s_tir.Schedule(func)
    if fusion.prologue != "none":
        for block in sch.get_child_blocks(sch.get_sblock("root")):  # exp helper stages fold into their users
            if sch.get(block).name_hint not in ("sumsq", "inv_rms", "xn", "acc", "y"):
                sch.compute_inline(block)
        xn = sch.get_sblock("xn")
        xt, xj = sch.get_loops(xn)
        if fusion.prologue == "rmsnorm":
            sch.compute_at(sch.get_sblock("inv_rms"), xt)
            sch.compute_at(sch.get_sblock("sumsq"), xt)
        _, xv = sch.split(xj, [None, lanes(int(sch.get(xj).extent))])
        sch.vectorize(xv)
        if rows > 1:
            sch.parallel(xt)
    acc, y = sch.get_sblock("acc"), sch.get_sblock("y")
    t, j = sch.get_loops(y)
    t_outer, t_inner = sch.split(t, [None, rows])
    j_outer, j_inner = sch.split(j, [None, nb])
    sch.reorder(j_outer, t_outer, t_inner, j_inner)
    sch.parallel(j_outer)
    sch.vectorize(j_inner)
    sch.set_scope(acc, 0, "local")
    sch.compute_at(acc, t_outer)
    *a_t, a_j, a_k = sch.get_loops(acc)[2:]  # a_t is absent when rows == 1
    sch.reorder(a_k, *a_t, a_j)
    if a_t:
        sch.unroll(a_t[0])
    sch.vectorize(a_j)
    sch.decompose_reduction(acc, a_k)
    return sch.mod["main"]


def linear_gemv(k: int, n: int, bias: bool = False, dtype: str = "float32", fusion: Fusion = PLAIN) -> PrimFunc:
    """Return the scheduled GEMV PrimFunc (x, w_packed, [b,] [g,] [res,] y) for small T, memory-bound."""
    return _schedule(_linear_prim_func(k, n, bias, 1, dtype, fusion), n, 1, fusion)


def linear_gemm(k: int, n: int, bias: bool = False, dtype: str = "float32", fusion: Fusion = PLAIN,
                rows: int = DEFAULTS["gemm_rows"]) -> PrimFunc:
    """Return the scheduled GEMM PrimFunc (x, w_packed, [b,] [g,] [res,] y) for large T, compute-bound."""
    return _schedule(_linear_prim_func(k, n, bias, rows, dtype, fusion), n, rows, fusion)


def linear_kernels(k: int, n: int, bias: bool = False, name: str = "linear",
                   dtype: str = "float32") -> dict[str, PrimFunc]:
    """Return {name_gemv, name_gemm} PrimFuncs for one Linear shape and weight dtype, to build into one module."""
    return {
        f"{name}_gemv": linear_gemv(k, n, bias, dtype).with_attr("global_symbol", f"{name}_gemv"),
        f"{name}_gemm": linear_gemm(k, n, bias, dtype).with_attr("global_symbol", f"{name}_gemm"),
    }


def linear_entry(name: str, t: int) -> str:
    """Return the function name of `linear_kernels(name=...)` to call for t tokens (default crossover)."""
    return f"{name}_gemv" if t < DEFAULTS["large_from"] else f"{name}_gemm"


def linear_knobs(req: LowerRequest) -> tuple[Knob, ...]:
    """The knobs of a (Fused)Linear's kernels: the block-quantized family's for a quantized weight, else the float one's."""
    return qlinear.KNOBS if req.types["weight"].quantized else KNOBS


@lowering("Linear", knobs=linear_knobs)
def lower_linear(req: LowerRequest, knobs: Mapping[str, Any], fusion: Fusion = PLAIN) -> Kernel:
    """(Fused)Linear over a 2-D input: GEMV below `large_from` tokens, register-tiled GEMM from there."""
    t = req.types
    if t["weight"].quantized:  # block formats (dsl/qformats): kernels that decode inside the loop
        family = kquant.lower_kquant if qformat(t["weight"].dtype).sub_blocks else qlinear.lower_qlinear
        return family(req, knobs, fusion)
    if t["input"].rank != 2:
        raise NotImplementedError(f"Linear lowering needs a 2-D input, got {t['input']}")
    dtype = t["weight"].dtype
    if dtype not in STORAGE:
        raise NotImplementedError(f"Linear weights of dtype {dtype} are not lowered (float32, float16, bfloat16 are)")
    n, k = t["weight"].shape
    bias = "bias" in t
    return Kernel(linear_gemv(k, n, bias, dtype, fusion), fusion.params(bias),
                  large=linear_gemm(k, n, bias, dtype, fusion, knobs["gemm_rows"]), large_from=knobs["large_from"],
                  packs={"weight": packer_name(dtype)})
