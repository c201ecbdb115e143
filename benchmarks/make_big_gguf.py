"""Write a realistic-size Llama GGUF with random weights (F16), then llama.cpp's Q4_K_M / Q5_K_M / Q6_K of it.

Benchmark tool (not a test dependency): the K-quant kernels and the load path measured on 1-2B shapes, whose rows
are multiples of 256 so that llama-quantize really writes Q4_K / Q5_K / Q6_K blocks (SmolLM2-135M's 576-wide rows
fall back to Q5_0 / Q8_0). Weights are seeded normal(0, 0.02) matrices and unit norms, so activations stay finite;
the tokenizer and chat template are copied from a GGUF of the same vocabulary (default: SmolLM2-135M-Instruct's).
Usage:
    python benchmarks/make_big_gguf.py [--shape smollm2-1.7b] [--out-dir /tmp/bigmodel]
        [--quantize /tmp/h10llama/build/bin/llama-quantize] [--types Q4_K_M Q5_K_M Q6_K] [--layers N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, LlamaFileType
from make_gguf_variants import copy_metadata

from graphllm.io.download import default_model_path


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture model's dimensions (HF config names)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    rope_theta: float
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5


# SmolLM2-1.7B's config.json; Llama-3.2-1B's body (GQA 32/8, 16 layers) without its rope scaling, on the copied
# 49152-token vocabulary instead of its own 128256
SHAPES = {
    "smollm2-1.7b": Shape(2048, 24, 32, 32, 8192, 130000.0),
    "llama-3.2-1b-body": Shape(2048, 16, 32, 8, 8192, 500000.0),
}
SEED = 0
STD = 0.02  # matrices ~ normal(0, 0.02), as a trained model's initialisation


def tensors(shape: Shape, vocab: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The GGUF tensor names and numpy shapes ([rows, columns]) of a tied-embedding Llama, in file order."""
    h, kv = shape.hidden_size, shape.hidden_size // shape.num_attention_heads * shape.num_key_value_heads
    yield "token_embd.weight", (vocab, h)
    for i in range(shape.num_hidden_layers):
        yield from ((f"blk.{i}.{name}.weight", dims) for name, dims in (
            ("attn_norm", (h,)), ("attn_q", (h, h)), ("attn_k", (kv, h)), ("attn_v", (kv, h)),
            ("attn_output", (h, h)), ("ffn_norm", (h,)), ("ffn_gate", (shape.intermediate_size, h)),
            ("ffn_up", (shape.intermediate_size, h)), ("ffn_down", (h, shape.intermediate_size))))
    yield "output_norm.weight", (h,)


def values(index: int, dims: tuple[int, ...]) -> np.ndarray:
    """Tensor `index`'s weights: F16 normal(0, STD) for a matrix (seeded by its index), float32 ones for a norm."""
    if len(dims) == 1:
        return np.ones(dims, np.float32)
    return (np.random.default_rng([SEED, index]).standard_normal(dims, np.float32) * STD).astype(np.float16)


def write_f16(path: Path, shape: Shape, tokenizer_gguf: Path) -> Path:
    """The random F16 GGUF, written tensor by tensor (never the whole model in memory)."""
    reader = GGUFReader(tokenizer_gguf)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(f"random {path.stem}")
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_context_length(shape.max_position_embeddings)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.num_hidden_layers)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.num_attention_heads)
    writer.add_head_count_kv(shape.num_key_value_heads)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.hidden_size // shape.num_attention_heads)
    writer.add_vocab_size(vocab)
    copy_metadata(reader, writer, lambda key: key.startswith("tokenizer."))
    layout = list(tensors(shape, vocab))
    for name, dims in layout:
        dtype = np.float32 if len(dims) == 1 else np.float16
        writer.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, (_, dims) in enumerate(layout):
        writer.write_tensor_data(values(index, dims))
    writer.close()
    return path


def quantize(quantizer: Path, src: Path, kind: str, threads: int) -> Path:
    """llama.cpp's `kind` quantization of `src`, beside it (its shared libraries are next to the binary)."""
    out = src.with_name(src.name.replace(".F16.", f".{kind}."))
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
        p for p in (str(quantizer.resolve().parent), os.environ.get("LD_LIBRARY_PATH")) if p))
    done = subprocess.run([str(quantizer), str(src), str(out), kind, str(threads)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"llama-quantize failed on {src} -> {kind}:\n{done.stderr[-2000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="smollm2-1.7b")
    ap.add_argument("--layers", type=int, help="override the shape's layer count (a smaller file, same kernels)")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/bigmodel"))
    ap.add_argument("--tokenizer-gguf", type=Path, help="GGUF to copy the tokenizer from (default: the default model)")
    ap.add_argument("--quantize", type=Path, default=Path("/tmp/h10llama/build/bin/llama-quantize"),
                    help="llama.cpp's llama-quantize binary")
    ap.add_argument("--types", nargs="*", default=["Q4_K_M", "Q5_K_M", "Q6_K"], help="none: only the F16 file")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    shape = replace(SHAPES[a.shape], num_hidden_layers=a.layers or SHAPES[a.shape].num_hidden_layers)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stem = a.shape + (f"-{shape.num_hidden_layers}l" if a.layers else "")
    start = time.perf_counter()
    src = write_f16(a.out_dir / f"{stem}-random.F16.gguf", shape, a.tokenizer_gguf or default_model_path())
    print(f"{src} ({src.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - start:.0f} s)", flush=True)
    for kind in a.types:
        start = time.perf_counter()
        out = quantize(a.quantize, src, kind, a.threads)
        print(f"{out} ({out.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
