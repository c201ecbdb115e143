"""Mistral: Llama's computation with sliding-window attention (config sliding_window, None: full)."""

from graphllm.models import sliding_window
from graphllm.models.llama import LlamaModel


class MistralModel(LlamaModel):
    def attention_window(self, layer):
        """Every layer attends to its last config['sliding_window'] keys."""
        return sliding_window(self.config, layer)


__model__ = MistralModel
