"""Qwen2: Llama's computation; its q/k/v biases are the optional bias ports Llama already reads."""

from graphllm.models.llama import LlamaModel


class Qwen2Model(LlamaModel):
    """Same graph as Llama: the checkpoint's q/k/v biases fill Linear's optional bias port."""


__model__ = Qwen2Model
