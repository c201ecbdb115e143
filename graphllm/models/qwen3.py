"""Qwen3: Llama's layer with an RMSNorm over each head of q and k (q_norm, k_norm) before RoPE."""

from graphllm.dsl.graph import ComputeGraph


class Qwen3Model(ComputeGraph):
    def build(self):
        weight, data, arch = self.weight, self.data, self.arch
        eps = arch.rms_norm_eps
        self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["hiddenStates"])
        self.DataTypeAs(data["hiddenStates"], data["atype"])
        for i in range(arch.num_layers):
            layer, attn = weight["model.layers."][i], weight["model.layers."][i][".self_attn."]
            self.RMSNorm(data["hiddenStates"], layer[".input_layernorm.weight"], eps, data["attenInput"])
            for x in ("q", "k", "v"):
                self.Linear(data["attenInput"], attn[x + "_proj.weight"], attn[x + "_proj.bias"], data[x])
                self.ExpandHead(data[x], arch.head_dim)
            for x in ("q", "k"):
                self.RMSNorm(data[x], attn[x + "_norm.weight"], eps, data[x])
                self.LlamaRotatePosition2D(data[x], data["positionIds"], data["sin"], data["cos"], arch.rope.pairs)
            self.FusedAttention(data["q"], data["pastKey."][i], data["pastValue."][i], data["k"], data["v"],
                                data["attenInput"], data["attentionMask"], data["attenOutput"], data["seqLens"],
                                arch.attn_scale, window=arch.windows[i])
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
