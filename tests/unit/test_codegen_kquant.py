"""Sub-block formats (q5_0, q5_1, q4_k, q5_k, q6_k): decoders bit-exact with gguf, packers, and the
(Fused)Linear GEMV/GEMM and Embedding kernels vs numpy on the exactly dequantized weights."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from graphllm.codegen.build import build_module
from graphllm.codegen.lower import Kernel, LowerRequest, lower
from graphllm.dsl.qformats import dequantize, qformat, quantize
from graphllm.dsl.types import TensorType
from graphllm.layouts import aligned_empty, get_packer, pack_subblocks, qlayout, sublayout
from graphllm.runtime.tvm import as_tensor, configure_threads

FORMATS = ["q5_0", "q5_1", "q4_k", "q5_k", "q6_k"]
# [N, K]: SmolLM2's projections (K = 576 is no whole number of 256-element K-quant blocks, so llama.cpp
# stores those as Q5_0 / Q8_0 and only the down projection, K = 1536, as a K-quant), a K of 2 x 256
# with an N that fills no 16-row block, and the 49152 x 576 lm_head / token_embd (Q5_0 once).
SHAPES = [(576, 576), (1536, 576), (576, 1536), (37, 512)]
CASES = [(f, n, k) for f in FORMATS for n, k in SHAPES if k % qformat(f).group == 0] + [("q5_0", 49152, 576)]
FUSED = [("rmsnorm", True), ("swiglu", True), ("rmsnorm", False)]  # (prologue, residual), N x K = 48 x 512
TOKENS = [1, 7, 128]
VOCAB = 101


def random_blocks(fmt: str, n: int, k: int, seed: int) -> np.ndarray:
    """Raw blocks uint8 [n, K/G * block_bytes] of random codes, scales and mins, with small finite fp16 heads."""
    f, rng = qformat(fmt), np.random.default_rng(seed)
    spec = f.sub_blocks
    raw = rng.integers(0, 256, (n * (k // f.group), f.block_bytes), dtype=np.uint8)
    top = 0.5 / (2 ** spec.bits * (64 if spec.scales == "uint8" else 128 if spec.scales else 1))  # |weights| <~ 0.5
    heads = rng.uniform(0.1, 1.0, (raw.shape[0], spec.heads)) * top * np.where(rng.random(raw.shape[0]) < 0.5, -1, 1)[:, None]
    at = f.block_bytes - 2 if fmt == "q6_k" else 0  # q6_k's d is its last field, the others' heads come first
    raw[:, at:at + 2 * spec.heads] = heads.astype(np.float16).view(np.uint8)
    raw[0, at:at + 2] = 0  # a zero scale
    return raw.reshape(n, -1)


# ------------------------------------------------------------------ formats and packers


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_is_bit_exact_with_gguf(fmt: str) -> None:
    """Random blocks decode exactly as gguf.quants.dequantize does; encoders (where any) round-trip."""
    raw = random_blocks(fmt, 6, 4 * qformat(fmt).group, seed=1)
    ours = dequantize(raw, fmt, (6, 4 * qformat(fmt).group))
    assert np.array_equal(ours.view(np.uint32), gguf.quants.dequantize(raw, QT[fmt.upper()]).view(np.uint32))
    w = np.random.default_rng(2).standard_normal((4, 256)).astype(np.float32)
    if fmt in ("q5_0", "q5_1"):
        assert np.array_equal(quantize(w, fmt), gguf.quants.quantize(w, QT[fmt.upper()]))
        assert np.abs(dequantize(quantize(w, fmt), fmt, w.shape) - w).max() <= np.abs(w).max() / 15
    else:
        with pytest.raises(NotImplementedError, match="llama.cpp"):
            quantize(w, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_record_size_and_packer_registry(fmt: str) -> None:
    """Records keep the file's size (K-quants with scales and mins unpacked: + 4 bytes a block); registered packer."""
    lay = sublayout(fmt)
    extra = 4 if lay.spec.mins == "dmin" else 0
    assert lay.record * 4 == 16 * (lay.fmt.block_bytes + extra)
    raw = random_blocks(fmt, 20, 512, seed=3)
    packed = get_packer(lay.pack_name())(raw)
    assert packed.shape == (2, 512 // lay.fmt.group, lay.record) and packed.ctypes.data % 64 == 0
    np.testing.assert_array_equal(packed, pack_subblocks(raw, fmt))
    with pytest.raises(NotImplementedError, match="sub-block"):
        qlayout(fmt)
    with pytest.raises(ValueError, match="raw blocks"):
        pack_subblocks(raw.astype(np.float32), fmt)
    assert TensorType.parse(f"{fmt}[16,512]").dtype == fmt


# ------------------------------------------------------------------ kernels


def _request(fmt: str, n: int, k: int, prologue: str = "none", residual: bool = False, bias: bool = False) -> LowerRequest:
    """A Linear (or FusedLinear with a prologue / residual) request over a [n, k] weight of format fmt."""
    x_cols = 2 * k if prologue == "swiglu" else k
    ports = {"input": TensorType(("T", x_cols)), "weight": TensorType((n, k), fmt)}
    ports |= {"bias": TensorType((n,))} if bias else {}
    ports |= {"norm": TensorType((k,))} if prologue == "rmsnorm" else {}
    ports |= {"residual": TensorType(("T", n))} if residual else {}
    fused = prologue != "none" or residual
    attrs = (("eps", 1e-5), ("prologue", prologue)) if fused else ()
    return LowerRequest("FusedLinear" if fused else "Linear", attrs, tuple(ports.items()), TensorType(("T", n)))


def _linear_requests() -> list[LowerRequest]:
    """Every kernel case of this file."""
    reqs = [_request(f, n, k, bias=(n == 37)) for f, n, k in CASES]
    return reqs + [_request(f, 48, 512, p, r, bias=not r) for f in FORMATS for p, r in FUSED]


@pytest.fixture(scope="module")
def built() -> tuple[object, dict[str, Kernel]]:
    """Every request lowered and all variants built into one module, plus one embedding per format."""
    configure_threads()
    kernels = {}
    for req in _linear_requests():
        kernels[req.key()] = lower(req)
    for fmt in FORMATS:
        emb = LowerRequest("Embedding", (), (("input", TensorType(("T",), "int32")), ("weight", TensorType((VOCAB, 512), fmt))),
                           TensorType(("T", 512)))
        kernels[emb.key()] = lower(emb)
    funcs = {key + suffix: f for key, kernel in kernels.items() for suffix, f in kernel.variants().items()}
    return build_module(funcs).mod, kernels


def _aligned(a: np.ndarray) -> np.ndarray:
    """A 64-byte-aligned copy."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _expected(req: LowerRequest, arrays: dict[str, np.ndarray], w: np.ndarray) -> np.ndarray:
    """What the kernel must compute, in float64: prologue, x @ W.T, bias, residual."""
    x, attrs = arrays["input"].astype(np.float64), dict(req.attrs)
    if attrs.get("prologue") == "rmsnorm":
        x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + attrs["eps"]) * arrays["norm"]
    elif attrs.get("prologue") == "swiglu":
        a, b = np.split(x, 2, axis=1)
        x = a / (1 + np.exp(-a)) * b
    y = x @ w.T.astype(np.float64)
    return y + arrays.get("bias", 0.0) + arrays.get("residual", 0.0)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("req", _linear_requests(), ids=lambda r: "_".join(f"{p}{t}" for p, t in r.inputs))
def test_linear_matches_numpy(built, req: LowerRequest, tokens: int) -> None:
    """GEMV and GEMM (every variant), fused prologues and residual: x @ dequantize(W).T within float32 rounding."""
    module, kernels = built
    kernel, types = kernels[req.key()], dict(req.inputs)
    n, k = types["weight"].shape
    fmt = types["weight"].dtype
    rng = np.random.default_rng(tokens + n)
    raw = random_blocks(fmt, n, k, seed=n + k)
    w = dequantize(raw, fmt, (n, k))
    arrays = {p: _aligned(rng.standard_normal(t.concrete({"T": tokens})).astype(np.float32))
              for p, t in types.items() if p != "weight"}
    arrays["input"][0, 0] = 40.0  # an outlier activation channel
    expect = _expected(req, arrays, w)
    packed = get_packer(kernel.packs["weight"])(raw)
    scale = np.abs(expect).max()
    for suffix in kernel.variants():
        out = aligned_empty((tokens, n))
        out[...] = np.nan
        args = {**arrays, "weight": packed, "out": out}
        module[req.key() + suffix](*(as_tensor(args[p]) for p in kernel.params))
        np.testing.assert_allclose(out, expect, rtol=0, atol=2e-5 * scale, err_msg=f"variant {suffix!r}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_embedding_rows_are_exact(built, fmt: str) -> None:
    """Embedding rows decode to exactly the dequantized table's rows (the tail row block included)."""
    module, kernels = built
    req = LowerRequest("Embedding", (), (("input", TensorType(("T",), "int32")), ("weight", TensorType((VOCAB, 512), fmt))),
                       TensorType(("T", 512)))
    kernel = kernels[req.key()]
    raw = random_blocks(fmt, VOCAB, 512, seed=9)
    ids = _aligned(np.array([0, 5, VOCAB - 1, 16, 5, 99], np.int32))
    out = aligned_empty((6, 512))
    module[req.key()](as_tensor(ids), as_tensor(get_packer(kernel.packs["weight"])(raw)), as_tensor(out))
    np.testing.assert_array_equal(out, dequantize(raw, fmt, (VOCAB, 512))[ids])
