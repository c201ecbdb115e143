"""GPU checks of the CUDA path, for a machine with an NVIDIA GPU (run by benchmarks/gpu_check.sh).

  kernels       every CUDA kernel (tests/unit/test_codegen_cuda.py's cases but attention) against the CPU
                kernel of the same request, on the same inputs, at T = 1, 7, 128; prints one line per kernel
  make-llama D  a Llama-3.2-1B-shaped HF folder in D: its config, random float16 weights, a small tokenizer
Exit status 1 when a kernel differs. Attention is checked end to end (greedy text against the CPU).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit")]

LLAMA_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
            "num_hidden_layers": 16, "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 131072, "tie_word_embeddings": True, "hidden_act": "silu",
            "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2}


def check_kernels() -> int:
    """Run each CUDA kernel and the CPU kernel of the same request on the same inputs; return the failure count."""
    from test_codegen_cuda import CUDA_CASES
    from test_codegen_ops import inputs_for

    from graphllm.codegen.build import build_fatbin, build_module, export_module
    from graphllm.codegen.lower import lower
    from graphllm.codegen.target import cuda_target
    from graphllm.layouts import get_packer
    from graphllm.runtime.cuda import register_fatbin, require_cuda
    from graphllm.runtime.tvm import as_tensor, configure_threads, load_module

    tvm_ffi = require_cuda(0)
    configure_threads()
    dev = tvm_ffi.device("cuda", 0)
    cases = [c for c in CUDA_CASES if "Attention" not in c.op]
    kernels = {c: (lower(c.request(), "cpu"), lower(c.request(), "cuda")) for c in cases}
    cpu_funcs, gpu_funcs = {}, {}
    for c, (cpu, gpu) in kernels.items():
        key = c.request().key()
        cpu_funcs.update({key + s: f for s, f in cpu.variants().items()})
        gpu_funcs[key] = gpu.func
    target = cuda_target(("sm_90",))
    executable = build_module(gpu_funcs, target)
    fatbin, digest = build_fatbin(executable, target)
    register_fatbin(fatbin, digest)
    with tempfile.TemporaryDirectory() as tmp:
        gpu_module = load_module(export_module(executable, Path(tmp) / "gpu.so"))
        cpu_module = load_module(export_module(build_module(cpu_funcs), Path(tmp) / "cpu.so"))
    alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
    copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")

    def to_gpu(a: np.ndarray) -> object:
        out = alloc(tvm_ffi.Shape(a.shape), tvm_ffi.dtype(str(a.dtype)), dev, None)
        copy(tvm_ffi.from_dlpack(a), out, None)
        return out

    failures = 0
    for c, (cpu, gpu) in kernels.items():
        key = c.request().key()
        for tokens in (1, 7, 128):
            arrays = inputs_for(_float_weights(c), tokens, np.random.default_rng(tokens))
            for port, layout in cpu.packs.items():
                arrays[port] = get_packer(layout)(_weight(c, port, arrays[port]))
            out_type = c.request().output
            shape = out_type.concrete({"T": tokens, "B": len(arrays["last_rows"])})
            expect = np.zeros(shape, out_type.dtype)
            symbol = key + ("_large" if cpu.large is not None and tokens >= cpu.large_from else "")
            cpu_module[symbol](*(as_tensor(expect if p == "out" else arrays[p]) for p in cpu.params))
            out_dev = to_gpu(np.zeros(shape, out_type.dtype))
            gpu_module[key](*(out_dev if p == "out" else to_gpu(np.ascontiguousarray(arrays[p])) for p in gpu.params))
            got = np.zeros(shape, out_type.dtype)
            copy(out_dev, tvm_ffi.from_dlpack(got), None)
            tvm_ffi.get_global_func("runtime.Device_StreamSync")(dev, None)
            err = float(np.max(np.abs(got - expect) / (np.abs(expect) + 1e-3))) if expect.size else 0.0
            ok = np.allclose(got, expect, rtol=1e-3, atol=1e-4)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} T={tokens:<4} max rel err {err:.2e}  {c}")
    return failures


def _float_weights(c: object) -> object:
    """The case with its block-quantized weights typed float32 (random values to quantize)."""
    import re
    from dataclasses import replace

    return replace(c, inputs=tuple((p, re.sub(r"^q\w+\[", "f32[", t)) for p, t in c.inputs))


def _weight(c: object, port: str, values: np.ndarray) -> np.ndarray:
    """A weight as its packer takes it: the float values, or their blocks in the case's quantized format."""
    from graphllm.dsl.qformats import quantize

    t = dict(c.request().inputs)[port]
    return quantize(np.asarray(values, np.float32), t.dtype) if t.quantized else np.asarray(values)


def make_llama(folder: Path) -> None:
    """Write a Llama-3.2-1B-shaped model with random float16 weights (and the tiny fixture's tokenizer)."""
    from safetensors.numpy import save_file

    c = LLAMA_1B
    h, f, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    tensors = {"model.embed_tokens.weight": w(c["vocab_size"], h), "model.norm.weight": np.ones(h, np.float16)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {p + "self_attn.q_proj.weight": w(q, h), p + "self_attn.k_proj.weight": w(kv, h),
                    p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, q),
                    p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
                    p + "mlp.down_proj.weight": w(h, f), p + "input_layernorm.weight": np.ones(h, np.float16),
                    p + "post_attention_layernorm.weight": np.ones(h, np.float16)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(c, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "tests" / "fixtures" / "tiny_llama" / name, folder / name)


if __name__ == "__main__":
    if sys.argv[1:2] == ["kernels"]:
        sys.exit(1 if check_kernels() else 0)
    if sys.argv[1:2] == ["make-llama"] and len(sys.argv) == 3:
        make_llama(Path(sys.argv[2]))
        sys.exit(0)
    sys.exit(__doc__)
