"""Mistral: Llama's computation; its sliding window (config sliding_window) is ArchConfig's per-layer window."""

from graphllm.models.llama import LlamaModel


class MistralModel(LlamaModel):
    """Same graph as Llama: FusedAttention's window comes from the typed config for every family."""


__model__ = MistralModel
