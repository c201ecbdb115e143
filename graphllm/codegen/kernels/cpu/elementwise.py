"""Elementwise kernels: AddTo, MulTo, Add, Mul, Silu, Gelu, Swiglu, Tanh, and chains of them (FusedElementwise).

Each op is a TE compute with the formula of its numpy reference in ops.py, scheduled by
`sched.schedule_rows` (row loop parallel in the large-T variant, row vectorized by 8).

exp and erf: LLVM lowers `tirx.exp` and `tirx.erf` to one scalar libm call per vector lane
(expf / erff), which undoes the vectorization. exp uses `topi.fast_exp` (a Cephes-style polynomial,
~1e-7 relative error, clamped to +-88.4 so that x / (1 + exp(-x)) stays finite); erf uses the
reference's own Abramowitz & Stegun 7.1.26 formula with that exp. The tanh GELU is computed as
x * sigmoid(2u), which equals 0.5 * x * (1 + tanh(u)) and needs one exp; Tanh likewise is
1 - 2 / (1 + exp(2x)) (the clamped exp saturates it to +-1 exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from graphllm.codegen.kernels.common import f32
from graphllm.codegen.kernels.cpu.sched import ROW_KNOBS, row_kernel
from graphllm.codegen.lower import Kernel, LowerRequest, attrs_of, lowering, require_float32
from graphllm.dsl.ops import BINARY_ELEMENTWISE, get_spec

# Abramowitz & Stegun 7.1.26, as in ops._erf: erf(z) = 1 - t * poly(t) * exp(-z^2), t = 1/(1 + P z).
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_SQRT1_2 = 0.7071067811865476
_SQRT2_PI = 0.7978845608028654
_GELU_TANH_C = 0.044715


def _elementwise(req: LowerRequest, knobs: Mapping[str, Any], ports: tuple[str, ...], body: Callable[..., Any]) -> Kernel:
    """Lower out = body(*inputs) (float32 ports, a TE tensor named "out") to a row Kernel."""
    require_float32(req, *ports)
    return row_kernel(req, [(p, req.types[p]) for p in ports], body, knobs)


def _with_exp(shape: tuple[Any, ...], arg: Callable[..., Any], combine: Callable[..., Any], name: str = "out") -> Any:
    """Return out[i] = combine(exp(arg(i)), i) with a vectorizable exp (topi.fast_exp, inlined later)."""
    from tvm import te, topi

    e = topi.fast_exp(te.compute(shape, arg, name=f"{name}_exp_arg"))
    return te.compute(shape, lambda *i: combine(e(*i), *i), name=name)


def _map(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A stage builder out[i] = fn(x0[i], x1[i], ...) over same-shaped inputs."""

    def stage(*xs: Any, name: str = "out") -> Any:
        """The TE compute of fn."""
        from tvm import te

        return te.compute(xs[0].shape, lambda *i: fn(*(x(*i) for x in xs)), name=name)
    return stage


def _silu(x: Any, name: str = "out") -> Any:
    """input / (1 + exp(-input))."""
    return _with_exp(x.shape, lambda *i: -x(*i), lambda e, *i: x(*i) / (f32(1.0) + e), name)


def _tanh(x: Any, name: str = "out") -> Any:
    """tanh(input) = 1 - 2 / (1 + exp(2 * input))."""
    return _with_exp(x.shape, lambda *i: f32(2.0) * x(*i), lambda e, *i: f32(1.0) - f32(2.0) / (f32(1.0) + e), name)


def stage_builder(op: str, attrs: dict[str, Any]) -> Callable[..., Any]:
    """The TE stage builder of one elementwise op (its numpy reference's formula): f(*inputs, name=...) -> tensor.

    Shared by the single-op kernels and FusedElementwise chains (fuse_elementwise).
    """
    if op == "AddTo":
        alpha = float(attrs["alpha"])
        return _map(lambda a, b: a + b) if alpha == 1.0 else _map(lambda a, b: a + b * f32(alpha))
    if op == "MulTo":
        return _map(lambda a, b: a * b)
    if op == "Add":
        v = f32(float(attrs["v"]))
        return _map(lambda a: a + v)
    if op == "Mul":
        v = f32(float(attrs["v"]))
        return _map(lambda a: a * v)
    if op == "Silu":
        return _silu
    if op == "Tanh":
        return _tanh
    if op == "Gelu":
        approximate = attrs["approximate"]
        if approximate not in ("none", "tanh"):
            raise NotImplementedError(f"Gelu: approximate={approximate!r} is not 'none' or 'tanh'")
        return _gelu_tanh if approximate == "tanh" else _gelu_erf
    raise NotImplementedError(f"{op} is not an elementwise op")


def _lower_single(req: LowerRequest, knobs: Mapping[str, Any], ports: tuple[str, ...],
                  inplace: str | None = None) -> Kernel:
    """One elementwise op as a row kernel."""
    stage = stage_builder(req.op, attrs_of(req))
    return replace(_elementwise(req, knobs, ports, lambda *xs: stage(*xs)), inplace=inplace)


@lowering("AddTo", knobs=ROW_KNOBS)
def lower_add_to(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input0 + input1 * alpha (alpha == 1: a plain add, as in the reference); in place over input0 when it dies here."""
    return _lower_single(req, knobs, ("input0", "input1"), inplace="input0")


@lowering("MulTo", knobs=ROW_KNOBS)
def lower_mul_to(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input0 * input1 (in place over input0 when it dies here)."""
    return _lower_single(req, knobs, ("input0", "input1"), inplace="input0")


@lowering("Add", knobs=ROW_KNOBS)
def lower_add(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input + v (a constant)."""
    return _lower_single(req, knobs, ("input",))


@lowering("Mul", knobs=ROW_KNOBS)
def lower_mul(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input * v (a constant)."""
    return _lower_single(req, knobs, ("input",))


@lowering("Silu", knobs=ROW_KNOBS)
def lower_silu(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input / (1 + exp(-input))."""
    return _lower_single(req, knobs, ("input",))


@lowering("Tanh", knobs=ROW_KNOBS)
def lower_tanh(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """tanh(input) = 1 - 2 / (1 + exp(2 * input))."""
    return _lower_single(req, knobs, ("input",))


@lowering("Gelu", knobs=ROW_KNOBS)
def lower_gelu(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """GELU: exact (erf, approximate="none") or the tanh form (approximate="tanh")."""
    return _lower_single(req, knobs, ("input",))


@lowering("FusedElementwise", knobs=ROW_KNOBS)
def lower_fused_elementwise(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """A chain of elementwise ops as one kernel: each step's stage reads the previous one (all inlined into "out")."""
    chain = attrs_of(req)["chain"]
    ports = ("input", "input1") if "input1" in req.types else ("input",)

    def body(x: Any, *extra: Any) -> Any:
        """The chain's TE stages, the last one named "out"."""
        for k, step in enumerate(chain):
            spec = get_spec(step["op"])
            attrs = {p.name: p.default for p in spec.attr_params if p.default is not None} | step.get("attrs", {})
            name = "out" if k == len(chain) - 1 else f"s{k}"
            binary = step["op"] in BINARY_ELEMENTWISE
            x = stage_builder(step["op"], attrs)(x, *(extra if binary else ()), name=name)
        return x

    return _elementwise(req, knobs, ports, body)


@lowering("Swiglu", knobs=ROW_KNOBS)
def lower_swiglu(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """silu(input[..., :n]) * input[..., n:], n = half the last dim."""
    return _elementwise(req, knobs, ("input",), swiglu_stage)


def swiglu_stage(v: Any, name: str = "out") -> Any:
    """The Swiglu TE stage on the output's shape: gate at column j, up at column j + n (FusedLinear's prologue too)."""
    n = int(v.shape[-1]) // 2

    def up(*i: Any) -> Any:
        """The up half at output index i."""
        return v(*i[:-1], i[-1] + n)

    shape = (*v.shape[:-1], n)
    return _with_exp(shape, lambda *i: -v(*i), lambda e, *i: v(*i) / (f32(1.0) + e) * up(*i), name)


def _gelu_tanh(x: Any, name: str = "out") -> Any:
    """0.5 * x * (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) * (x + 0.044715 x^3)."""

    def minus_2u(*i: Any) -> Any:
        """-2u at index i."""
        v = x(*i)
        return f32(-2.0 * _SQRT2_PI) * (v + f32(_GELU_TANH_C) * v * v * v)

    return _with_exp(x.shape, minus_2u, lambda e, *i: x(*i) / (f32(1.0) + e), name)


def _gelu_erf(x: Any, name: str = "out") -> Any:
    """0.5 * x * (1 + erf(x / sqrt(2))), erf as in ops._erf (A&S 7.1.26)."""
    from tvm import tirx

    def minus_z2(*i: Any) -> Any:
        """-z^2 at index i, z = x / sqrt(2)."""
        z = x(*i) * f32(_SQRT1_2)
        return -(z * z)

    def combine(e: Any, *i: Any) -> Any:
        """GELU from exp(-z^2) at index i."""
        v = x(*i)
        z = v * f32(_SQRT1_2)
        t = f32(1.0) / (f32(1.0) + f32(_ERF_P) * tirx.abs(z))
        poly = f32(_ERF_A[-1])
        for a in reversed(_ERF_A[:-1]):
            poly = poly * t + f32(a)
        tail = t * poly * e  # 1 - |erf(z)|
        erf = tirx.Select(z < f32(0.0), tail - f32(1.0), f32(1.0) - tail)
        return f32(0.5) * v * (f32(1.0) + erf)

    return _with_exp(x.shape, minus_z2, combine, name)
