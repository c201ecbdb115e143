"""Llama (and SmolLM2): the built-in description; Mistral, Qwen2 and Qwen3 reuse it."""

from graphllm.dsl.graph import ComputeGraph


class LlamaModel(ComputeGraph):
    qk_norm = False  # Qwen3: an RMSNorm over each head of q and k (q_norm, k_norm) before RoPE

    def build(self):
        weight, data, arch = self.weight, self.data, self.arch
        self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["hiddenStates"])
        self.DataTypeAs(data["hiddenStates"], data["atype"])
        for i in range(arch.num_layers):
            layer, attn = weight["model.layers."][i], weight["model.layers."][i][".self_attn."]
            self.RMSNorm(data["hiddenStates"], layer[".input_layernorm.weight"], arch.rms_norm_eps, data["attenInput"])
            for x in ("q", "k", "v"):
                self.Linear(data["attenInput"], attn[x + "_proj.weight"], attn[x + "_proj.bias"], data[x])
            for x in ("q", "k", "v"):
                self.ExpandHead(data[x], arch.head_dim)
            for x in ("q", "k"):
                if self.qk_norm:
                    self.RMSNorm(data[x], attn[x + "_norm.weight"], arch.rms_norm_eps, data[x])
                self.LlamaRotatePosition2D(data[x], data["positionIds"], data["sin"], data["cos"], arch.rope.pairs)
            self.FusedAttention(data["q"], data["pastKey."][i], data["pastValue."][i], data["k"], data["v"],
                                data["attenInput"], data["attentionMask"], data["attenOutput"], data["seqLens"],
                                arch.attn_scale, window=arch.windows[i])
            self.Linear(data["attenOutput"], attn["o_proj.weight"], attn["o_proj.bias"], data["attenLastOutput"])
            self.AddTo(data["hiddenStates"], data["attenLastOutput"])
            self.RMSNorm(data["hiddenStates"], layer[".post_attention_layernorm.weight"], arch.rms_norm_eps,
                         data["attenInput"])
            for x, proj in (("w1", "gate_proj"), ("w3", "up_proj")):
                self.Linear(data["attenInput"], layer[".mlp." + proj + ".weight"], layer[".mlp." + proj + ".bias"], data[x])
            self.Silu(data["w1"], data["w1"])
            self.MulTo(data["w1"], data["w3"])
            self.Linear(data["w1"], layer[".mlp.down_proj.weight"], layer[".mlp.down_proj.bias"], data["w2"])
            self.AddTo(data["hiddenStates"], data["w2"])
        self.SplitLastTokenStates(data["hiddenStates"], data["seqLens"], data["lastTokensStates"])
        self.RMSNorm(data["lastTokensStates"], weight["model.norm.weight"], arch.rms_norm_eps, data["lastTokensStates"])
        self.Linear(data["lastTokensStates"], weight["lm_head.weight"], weight["lm_head.bias"], data["logits"])


__model__ = LlamaModel
