"""--dtype float16 / bfloat16 (weight-only 16-bit Linear and Embedding weights), 16-bit GGUF and safetensors
matrices kept as stored, and GGUF types without a kernel dequantized at load with a warning."""

from __future__ import annotations

from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from test_gguf_loader import write_gguf

from graphllm.cli import main
from graphllm.passes.quantize import block_format
from graphllm.io.gguf import GGUFTensor, _warn_dequantized, open_gguf
from graphllm.pipeline import weight_source
from graphllm.runtime.llm import LLM
from graphllm.io.loader import load_model, weight_types

FIXTURES = Path(__file__).parents[1] / "fixtures"
NUMPY = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TOL = 1e-4


def _types(llm: LLM) -> dict[str, str]:
    """Checkpoint name -> graph dtype of every Weight node."""
    return {llm.graph[n]["name"]: llm.graph[n]["type"].dtype for n in llm.graph.nodes_of("Weight")}


@pytest.mark.parametrize("dtype", list(NUMPY))
def test_16bit_dtypes_are_float_types(dtype: str) -> None:
    assert block_format(dtype) is None


@pytest.mark.parametrize("dtype", list(NUMPY))
def test_linear_and_embedding_weights_get_the_16bit_type_and_reference_uses_rounded_values(dtype: str) -> None:
    """Matrices become 16-bit (the tied table too), norms stay float32; the reference computes on the rounded values."""
    llm = LLM.load(FIXTURES / "tiny_qwen2", executor="reference", dtype=dtype, max_context=32)
    types = _types(llm)
    assert types["model.embed_tokens.weight"] == types["model.layers.0.mlp.down_proj.weight"] == dtype
    q_bias = next(name for name in types if "layers.0.self_attn.q_proj.bias" in name)  # stacked with k, v by merge_linears
    assert types["model.norm.weight"] == types[q_bias] == "float32"
    value = llm.executor.weights[next(n for n in llm.graph.nodes_of("Weight")
                                      if llm.graph[n]["name"] == "model.embed_tokens.weight")]
    exact = llm.model.weights["model.embed_tokens.weight"].astype(NUMPY[dtype]).astype(np.float32)
    np.testing.assert_array_equal(value, exact)


@pytest.fixture(scope="module", params=[("tiny_llama", "float16"), ("tiny_llama", "bfloat16"),
                                        ("tiny_qwen2", "float16"), ("tiny_qwen2", "bfloat16")], ids=str)
def pair(request, exact_kv):
    """The compiled and the reference executor of one fixture model at one 16-bit --dtype."""
    name, dtype = request.param
    return (LLM.load(FIXTURES / name, executor="tvm", dtype=dtype, max_context=64, kv_dtype=exact_kv),
            LLM.load(FIXTURES / name, executor="reference", dtype=dtype, max_context=64, kv_dtype=exact_kv))


@pytest.mark.parametrize("tokens", [1, 40])
def test_compiled_equals_reference(pair, tokens: int) -> None:
    """GEMV (T=1) and GEMM (T=40) on 16-bit weights compute what the reference does on the same rounded weights."""
    tvm, ref = pair
    assert set(_types(tvm).values()) == set(_types(ref).values()) and len(set(_types(tvm).values())) == 2
    ids = (np.arange(tokens) * 37 % 300 + 3).tolist()
    np.testing.assert_allclose(tvm.step(ids, range(tokens), [tokens], [0]),
                               ref.step(ids, range(tokens), [tokens], [0]), atol=TOL, rtol=0)


def test_gguf_16bit_matrices_pass_through_untouched(tmp_path: Path, exact_kv: str) -> None:
    """No --dtype: a GGUF's F16/BF16 matrices keep their type, handed over as the file's numbers, and the
    compiled executor computes what the reference does on them."""
    path = tmp_path / "m.gguf"
    hf = write_gguf(path, types={"attn_q": QT.F16, "attn_output": QT.BF16})
    model = load_model(path)
    types = weight_types(model)
    assert types["model.layers.0.self_attn.q_proj.weight"].dtype == "float16"  # rows un-permuted
    assert types["model.layers.0.self_attn.k_proj.weight"].dtype == "float16"
    assert types["model.layers.1.mlp.up_proj.weight"].dtype == "bfloat16"
    assert types["model.layers.0.self_attn.o_proj.weight"].dtype == "bfloat16"
    assert types["model.norm.weight"].dtype == "float32"
    assert weight_types(model, native=False)["model.layers.0.self_attn.k_proj.weight"].dtype == "float32"
    tvm = LLM.load(path, executor="tvm", max_context=32, kv_dtype=exact_kv)
    ref = LLM.load(path, executor="reference", max_context=32, kv_dtype=exact_kv)
    up = "model.layers.1.mlp.up_proj.weight"
    stored = tvm.executor.weights  # the packed copies; the source hands over the file's numbers
    assert any(a.dtype == np.uint16 for a in stored.values()) and any(a.dtype == np.float16 for a in stored.values())
    source = ref.executor.weights[next(n for n in ref.graph.nodes_of("Weight") if ref.graph[n]["name"] == up)]
    np.testing.assert_array_equal(source, hf[up])  # exactly representable values (multiples of 1/64)
    raw = weight_source(tvm.model, tvm.graph)[up]
    assert raw.dtype == ml_dtypes.bfloat16  # the file's bytes as they are (read as a copy: io/gguf.py)
    np.testing.assert_array_equal(raw.view(np.uint8).reshape(-1), tvm.model.weights.tensors[up].data.reshape(-1))
    for tokens in (1, 9):
        ids = (np.arange(tokens) * 7 % 40).tolist()
        np.testing.assert_allclose(tvm.step(ids, range(tokens), [tokens], [0]),
                                   ref.step(ids, range(tokens), [tokens], [0]), atol=TOL, rtol=0)


@pytest.mark.parametrize("dtype", list(NUMPY))
def test_export_16bit_then_load_keeps_16bit(tmp_path: Path, dtype: str) -> None:
    """`graphllm export --dtype float16` writes F16 (BF16) tensors; loading them keeps 16-bit and the same logits."""
    out = tmp_path / "x"
    assert main(["export", "-m", str(FIXTURES / "tiny_llama"), "--dtype", dtype, "-o", str(out)]) == 0
    exported = LLM.load(out, executor="reference", max_context=32)
    direct = LLM.load(FIXTURES / "tiny_llama", executor="reference", dtype=dtype, max_context=32)
    assert _types(exported) == _types(direct)
    assert exported.model.file_type == f"safetensors:{dtype}"
    ids = [5, 9, 33, 100, 2]
    np.testing.assert_array_equal(exported.step(ids, range(5), [5], [0]), direct.step(ids, range(5), [5], [0]))


def test_gguf_type_without_kernel_is_dequantized_with_a_warning(tmp_path: Path) -> None:
    """An MXFP4 matrix (gguf can write it; no graphllm kernel computes on it) loads as float32, with one warning."""
    path = tmp_path / "m.gguf"
    write_gguf(path, types={"ffn_gate": QT.MXFP4})
    with pytest.warns(UserWarning, match=r"m\.gguf: dequantizing 2 MXFP4 tensor\(s\) to float32"):
        model = load_model(path)
    assert weight_types(model)["model.layers.0.mlp.gate_proj.weight"].dtype == "float32"


def test_k_quant_tensor_is_dequantized_with_a_warning() -> None:
    """K-quants without kernels (here Q3_K; gguf has no encoder for them, so the blocks are random with a finite scale)."""
    rng = np.random.default_rng(0)
    _, block_bytes = gguf.GGML_QUANT_SIZES[QT.Q3_K]
    raw = rng.integers(0, 256, size=(4, block_bytes), dtype=np.uint8)
    raw[:, -2:] = np.full((4, 1), 0.01, np.float16).view(np.uint8)  # d, the block's last field
    t = GGUFTensor("x.weight", "x.weight", QT.Q3_K, (4, 256), raw)
    with pytest.warns(UserWarning, match="dequantizing 1 Q3_K tensor"):
        _warn_dequantized({"x.weight": t}, Path("k.gguf"))
    np.testing.assert_array_equal(t.load(), gguf.quants.dequantize(raw, QT.Q3_K))
    assert np.isfinite(t.load()).all() and t.float_dtype is None and t.qformat is None


def test_native_gguf_types_do_not_warn(tmp_path: Path, recwarn) -> None:
    write_gguf(tmp_path / "m.gguf")
    open_gguf(tmp_path / "m.gguf")
    assert not [w for w in recwarn if "dequantizing" in str(w.message)]
