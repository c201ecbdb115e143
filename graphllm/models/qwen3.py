"""Qwen3: Llama's layer with an RMSNorm over each head of q and k (q_norm, k_norm) before RoPE."""

from graphllm.models.llama import LlamaModel


class Qwen3Model(LlamaModel):
    qk_norm = True


__model__ = Qwen3Model
