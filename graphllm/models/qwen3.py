"""Qwen3: Llama's layer with an RMSNorm over each head of q and k (q_norm, k_norm) before RoPE."""

import math

from graphllm.dsl.graph import ComputeGraph
from graphllm.models import sliding_window


class Qwen3Model(ComputeGraph):
    def build(self):
        weight, data, config = self.weight, self.data, self.config
        config["max_positions"] = config["max_position_embeddings"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        eps = config["rms_norm_eps"]
        self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["hiddenStates"])
        self.DataTypeAs(data["hiddenStates"], data["atype"])
        for i in range(config["num_hidden_layers"]):
            layer, attn = weight["model.layers."][i], weight["model.layers."][i][".self_attn."]
            self.RMSNorm(data["hiddenStates"], layer[".input_layernorm.weight"], eps, data["attenInput"])
            for x in ("q", "k", "v"):
                self.Linear(data["attenInput"], attn[x + "_proj.weight"], attn[x + "_proj.bias"], data[x])
                self.ExpandHead(data[x], head_dim)
            for x in ("q", "k"):
                self.RMSNorm(data[x], attn[x + "_norm.weight"], eps, data[x])
                self.LlamaRotatePosition2D(data[x], data["positionIds"], data["sin"], data["cos"], head_dim // 2)
            self.FusedAttention(data["q"], data["pastKey."][i], data["pastValue."][i], data["k"], data["v"],
                                data["attenInput"], data["attentionMask"], data["attenOutput"], data["seqLens"],
                                1.0 / math.sqrt(head_dim), window=sliding_window(config, i))
            self.Linear(data["attenOutput"], attn["o_proj.weight"], attn["o_proj.bias"], data["attenLastOutput"])
            self.AddTo(data["hiddenStates"], data["attenLastOutput"])
            self.RMSNorm(data["hiddenStates"], layer[".post_attention_layernorm.weight"], eps, data["attenInput"])
            self.Linear(data["attenInput"], layer[".mlp.gate_proj.weight"], None, data["w1"])
            self.Linear(data["attenInput"], layer[".mlp.up_proj.weight"], None, data["w3"])
            self.Silu(data["w1"], data["w1"])
            self.MulTo(data["w1"], data["w3"])
            self.Linear(data["w1"], layer[".mlp.down_proj.weight"], None, data["w2"])
            self.AddTo(data["hiddenStates"], data["w2"])
        self.SplitLastTokenStates(data["hiddenStates"], data["seqLens"], data["lastTokensStates"])
        self.RMSNorm(data["lastTokensStates"], weight["model.norm.weight"], eps, data["lastTokensStates"])
        self.Linear(data["lastTokensStates"], weight["lm_head.weight"], None, data["logits"])


__model__ = Qwen3Model
