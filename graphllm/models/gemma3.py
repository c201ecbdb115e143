"""Gemma 3 (text): Gemma 2's layer with q/k RMSNorms per head, no attention soft-cap, and two RoPEs: sliding
layers rotate with rope_local_base_freq (sinLocal/cosLocal), the others with rope_theta and rope_scaling."""

from graphllm.models.gemma2 import Gemma2Model


class Gemma3Model(Gemma2Model):
    qk_norm = True


__model__ = Gemma3Model
