"""Every lowered op's TVM kernel (each variant) against the op's numpy reference, table-driven.

All kernels are built into one module once for this file (each tvm.compile has a fixed cost), then
called through zero-copy tensors on 64-byte-aligned buffers at several token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from graphllm.codegen import lower as lowering_api
from graphllm.codegen.build import build_module
from graphllm.runtime.tvm import as_tensor
from graphllm.codegen.knobs import defaults
from graphllm.codegen.lower import EXTRAS, HOST_OPS, LOWERINGS, VIEW_OPS, Kernel, LowerRequest, knobs_of, lower
from graphllm.runtime.tvm import configure_threads
from graphllm.dsl.ops import REGISTRY, RefContext, get_spec
from graphllm.dsl.types import TensorType
from graphllm.layouts import aligned_empty

TOKENS = (1, 7, 128)
LOWERED_ELSEWHERE = {"Linear", "FusedAttention"}
# int ports that index the first dim of another port: ids must stay inside it
INDEXES = {"input": "weight", "positionIds": "sin"}
# values planted at the start of every activation input: the tails of exp/erf/tanh
EXTREMES = (-100.0, -30.0, -9.0, 9.0, 30.0, 100.0)
ACTIVATIONS = {"input", "input0", "input1"}


@dataclass(frozen=True)
class Case:
    """One node to lower: op, attributes and input types (T = tokens, B = sequences)."""

    op: str
    attrs: tuple[tuple[str, Any], ...]
    inputs: tuple[tuple[str, str], ...]

    def request(self) -> LowerRequest:
        """The LowerRequest of this node, its output type from the op's shape rule."""
        types = {port: TensorType.parse(text) for port, text in self.inputs}
        output = get_spec(self.op).infer(types, self.full_attrs())
        return LowerRequest(self.op, self.attrs, tuple(types.items()), output)

    def full_attrs(self) -> dict[str, Any]:
        """The attributes with the spec's defaults, as the reference executor passes them."""
        defaults = {p.name: p.default for p in get_spec(self.op).attr_params if p.default is not None}
        return {**defaults, **dict(self.attrs)}

    def __str__(self) -> str:
        """The test id: op(attrs) and input types."""
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs)
        return f"{self.op}({attrs})" + ",".join(text for _, text in self.inputs)


def case(op: str, inputs: dict[str, str], **attrs: Any) -> Case:
    """Build a Case from keyword attributes."""
    return Case(op, tuple(sorted(attrs.items())), tuple(inputs.items()))


def cases() -> list[Case]:
    """Every op at a real hidden size (576) and one that is not a multiple of 8 (36), plus 3-D layouts."""
    table = []
    for h in (576, 36):
        x, w = f"f32[T,{h}]", f"f32[{h}]"
        table += [
            case("AddTo", {"input0": x, "input1": x}, alpha=1.0),
            case("AddTo", {"input0": x, "input1": x}, alpha=0.5),
            case("MulTo", {"input0": x, "input1": x}),
            case("Add", {"input": x}, v=0.25),
            case("Mul", {"input": x}, v=-1.5),
            case("Silu", {"input": x}),
            case("Gelu", {"input": x}, approximate="none"),
            case("Gelu", {"input": x}, approximate="tanh"),
            case("Swiglu", {"input": f"f32[T,{2 * h}]"}),
            case("RMSNorm", {"input": x, "weight": w}, eps=1e-6),
            case("LayerNorm", {"input": x, "weight": w, "bias": w}, eps=1e-5),
            case("LayerNorm", {"input": x, "weight": w}, eps=1e-5),
            case("Embedding", {"input": "i32[T]", "weight": f"f32[100,{h}]"}),
            case("SplitLastTokenStates", {"input": x, "seqLens": "i32[B]"}),
            case("DataTypeAs", {"input": x, "input1": "f16[1]"}),
            case("DataTypeAs", {"input": f"f16[T,{h}]", "input1": "f32[1]"}),
            case("Cat", {"input0": x, "input1": "f32[T,12]"}, axis=-1),
            case("Split", {"input": x}, axis=1, start=4, end=h - 4),
            case("Repeat", {"input": x}, axis=1, repeatTimes=3),
        ]
    table += [
        case("Silu", {"input": "f32[T,4,9]"}),
        case("RMSNorm", {"input": "f32[T,3,36]", "weight": "f32[36]"}, eps=1e-6),
        case("LlamaRotatePosition2D",
             {"input": "f32[T,3,64]", "positionIds": "i32[T]", "sin": "f32[160,32]", "cos": "f32[160,32]"},
             rotaryDim=32),
        case("LlamaRotatePosition2D",
             {"input": "f32[T,2,36]", "positionIds": "i32[T]", "sin": "f32[160,15]", "cos": "f32[160,15]"},
             rotaryDim=12),
        case("Cat", {"input0": "f32[T,2,8]", "input1": "f32[T,3,8]"}, axis=1),
        case("Cat", {"input0": "f32[T,2,5]", "input1": "f32[T,2,3]"}, axis=2),
        case("Cat", {"input0": "f32[2,8]", "input1": "f32[3,8]"}, axis=0),
        case("Split", {"input": "f32[T,2,24]"}, axis=-1, start=8, end=16),
        case("Repeat", {"input": "f32[T,2,8]"}, axis=1, repeatTimes=2),
        case("Tanh", {"input": "f32[T,576]"}),
        case("Tanh", {"input": "f32[T,36]"}),
        case("RMSNorm", {"input": "f32[T,576]", "weight": "f32[576]"}, eps=1e-6, weightOffset=1.0),
        case("RMSNorm", {"input": "f32[T,3,36]", "weight": "f32[36]"}, eps=1e-6, weightOffset=1.0),
        case("RMSNorm", {"input": "f32[T,4,32]", "weight": "f32[32]"}, eps=1e-6),  # row == reduction lanes
    ]
    return table


CASES = cases()
ATTENTION = {"q": "f32[T,9,64]", "k": "f32[1]", "v": "f32[1]", "curk": "f32[T,3,64]", "curv": "f32[T,3,64]",
             "seqLens": "i32[B]"}
# every kernel family's requests (the table above, plus the families test_codegen_linear/qlinear/attention build)
KNOB_SAMPLES = CASES + [
    case("FusedElementwise", {"input": "f32[T,576]", "input1": "f32[T,576]"}, chain=[{"op": "Silu"}, {"op": "MulTo"}]),
    case("Linear", {"input": "f32[T,576]", "weight": "f32[192,576]"}),
    case("Linear", {"input": "f32[T,576]", "weight": "q4_1[192,576]"}),
    case("FusedLinear", {"input": "f32[T,576]", "weight": "bf16[192,576]", "norm": "f32[576]"}, prologue="rmsnorm", eps=1e-6),
    case("FusedLinear", {"input": "f32[T,1152]", "weight": "q8_0[576,576]", "residual": "f32[T,576]"}, prologue="swiglu"),
    case("Embedding", {"input": "i32[T]", "weight": "f16[100,576]"}),
    case("Embedding", {"input": "i32[T]", "weight": "q8_0[100,576]"}),
    case("FusedAttention", ATTENTION, scale=0.125),
    case("QKVAttention", {"qkv": "f32[T,960]", "k": "f32[1]", "v": "f32[1]", "seqLens": "i32[B]"},
         numHeads=9, numKVHeads=3, scale=0.125),
]


@pytest.fixture(scope="module")
def built() -> tuple[Any, dict[Case, Kernel]]:
    """Lower every case and build all kernel variants into one module (one tvm.compile)."""
    configure_threads()
    kernels = {c: lower(c.request()) for c in CASES}
    funcs = {}
    for c, kernel in kernels.items():
        for suffix, func in kernel.variants().items():
            funcs[c.request().key() + suffix] = func
    return build_module(funcs), kernels


def inputs_for(c: Case, tokens: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random aligned inputs of the case's types at T = tokens (plus the `last_rows` extra)."""
    seqs = min(tokens, 3)
    ends = np.sort(rng.choice(np.arange(1, tokens), seqs - 1, replace=False))
    seq_lens = np.diff(np.concatenate([[0], ends, [tokens]]))
    types = dict(c.request().inputs)
    arrays: dict[str, np.ndarray] = {}
    for port, t in types.items():
        a = aligned_empty(t.concrete({"T": tokens, "B": seqs}), t.dtype)
        if port == "seqLens":
            a[...] = seq_lens
        elif t.dtype.startswith("int"):
            a[...] = rng.integers(0, types[INDEXES[port]].shape[0], a.shape)
        else:
            a[...] = rng.standard_normal(a.shape) * 2
            if port in ACTIVATIONS:
                flat = a.reshape(-1)
                flat[: len(EXTREMES)] = EXTREMES[: flat.size]
        arrays[port] = a
    arrays["last_rows"] = aligned_empty(seqs, "int32")
    arrays["last_rows"][...] = np.cumsum(seq_lens) - 1
    return arrays


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("c", CASES, ids=str)
def test_kernel_matches_reference(built: tuple[Any, dict[Case, Kernel]], c: Case, tokens: int) -> None:
    """Each variant of the op's kernel computes what the numpy reference does, at every T."""
    module, kernels = built
    kernel, req = kernels[c], c.request()
    ports = {port for port, _ in req.inputs}
    assert kernel.params[-1] == "out" and set(kernel.params) <= ports | set(EXTRAS) | {"out"}
    arrays = inputs_for(c, tokens, np.random.default_rng(tokens))
    with np.errstate(over="ignore"):  # the reference's exp(100) is inf, and x / inf is the right 0
        expect = get_spec(c.op).reference({p: arrays[p] for p in ports}, c.full_attrs(), RefContext())
    for suffix in kernel.variants():
        out = aligned_empty(expect.shape, expect.dtype)
        module[req.key() + suffix](*(as_tensor(out if p == "out" else arrays[p]) for p in kernel.params))
        assert out.dtype == expect.dtype
        np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-6, err_msg=f"variant {suffix!r}")


def test_split_last_token_states_binds_last_rows() -> None:
    """SplitLastTokenStates takes the `last_rows` extra in place of the seqLens port."""
    c = case("SplitLastTokenStates", {"input": "f32[T,36]", "seqLens": "i32[B]"})
    assert lower(c.request()).params == ("input", "last_rows", "out")


def test_every_op_is_lowered() -> None:
    """Each registry op has a lowering, is a view or host op, or is Linear/FusedAttention (lowered elsewhere)."""
    lowering_api.load_kernel_modules()  # what lower() does first: import every kernel module
    exempt = VIEW_OPS | HOST_OPS | LOWERED_ELSEWHERE
    missing = sorted(op for op in REGISTRY if (op, "cpu") not in LOWERINGS and op not in exempt)
    assert not missing, f"ops without a TVM lowering: {missing}"


def test_every_lowering_declares_its_knobs() -> None:
    """Each CPU lowering's knobs have unique names, a meaning and an allowed default; lowering records the defaults."""
    lowering_api.load_kernel_modules("cpu")
    sampled = {c.op for c in KNOB_SAMPLES}
    assert not sorted(op for op, target in LOWERINGS if target == "cpu" and op not in sampled)
    for c in KNOB_SAMPLES:
        knobs = knobs_of(c.request(), "cpu")
        assert len({k.name for k in knobs}) == len(knobs), c
        assert all(k.default in k.values and k.meaning for k in knobs), c
        assert lower(c.request(), "cpu").knobs == defaults(knobs), c
