"""Gemma 2: scaled embeddings, (1 + weight) RMSNorms before and after attention and MLP, GELU-tanh,
query scale from query_pre_attn_scalar, soft-capped attention scores and logits, and sliding-window
attention on alternate layers."""

from graphllm.dsl.graph import ComputeGraph


class Gemma2Model(ComputeGraph):
    qk_norm = False  # Gemma 3: a (1 + weight) RMSNorm over each head of q and k (q_norm, k_norm) before RoPE

    def build(self):
        weight, data, arch = self.weight, self.data, self.arch
        head_dim, eps = arch.head_dim, arch.rms_norm_eps
        approximate = "tanh" if "tanh" in arch.hidden_act else "none"
        self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["hiddenStates"])
        self.DataTypeAs(data["hiddenStates"], data["atype"])
        self.Mul(data["hiddenStates"], arch.hidden_size ** 0.5, data["hiddenStates"])
        for i in range(arch.num_layers):
            layer, attn = weight["model.layers."][i], weight["model.layers."][i][".self_attn."]
            self.RMSNorm(data["hiddenStates"], layer[".input_layernorm.weight"], eps, data["attenInput"], 1.0)
            for x in ("q", "k", "v"):
                self.Linear(data["attenInput"], attn[x + "_proj.weight"], attn[x + "_proj.bias"], data[x])
                self.ExpandHead(data[x], head_dim)
            sin, cos = arch.rope_inputs(i)
            for x in ("q", "k"):
                if self.qk_norm:
                    self.RMSNorm(data[x], attn[x + "_norm.weight"], eps, data[x], 1.0)
                self.LlamaRotatePosition2D(data[x], data["positionIds"], data[sin], data[cos], arch.rope.pairs)
            self.FusedAttention(data["q"], data["pastKey."][i], data["pastValue."][i], data["k"], data["v"],
                                data["attenInput"], data["attentionMask"], data["attenOutput"], data["seqLens"],
                                arch.attn_scale, window=arch.windows[i], softcap=arch.attn_softcap)
            self.Linear(data["attenOutput"], attn["o_proj.weight"], attn["o_proj.bias"], data["attenLastOutput"])
            self.RMSNorm(data["attenLastOutput"], layer[".post_attention_layernorm.weight"], eps,
                         data["attenLastOutput"], 1.0)
            self.AddTo(data["hiddenStates"], data["attenLastOutput"])
            self.RMSNorm(data["hiddenStates"], layer[".pre_feedforward_layernorm.weight"], eps, data["attenInput"], 1.0)
            self.Linear(data["attenInput"], layer[".mlp.gate_proj.weight"], None, data["w1"])
            self.Linear(data["attenInput"], layer[".mlp.up_proj.weight"], None, data["w3"])
            self.Gelu(data["w1"], data["w1"], approximate)
            self.MulTo(data["w1"], data["w3"])
            self.Linear(data["w1"], layer[".mlp.down_proj.weight"], None, data["w2"])
            self.RMSNorm(data["w2"], layer[".post_feedforward_layernorm.weight"], eps, data["w2"], 1.0)
            self.AddTo(data["hiddenStates"], data["w2"])
        self.SplitLastTokenStates(data["hiddenStates"], data["seqLens"], data["lastTokensStates"])
        self.RMSNorm(data["lastTokensStates"], weight["model.norm.weight"], eps, data["lastTokensStates"], 1.0)
        self.Linear(data["lastTokensStates"], weight["lm_head.weight"], None, data["logits"])
        cap = arch.final_softcap
        if cap:  # logits = cap * tanh(logits / cap)
            self.Mul(data["logits"], 1.0 / cap, data["logits"])
            self.Tanh(data["logits"], data["logits"])
            self.Mul(data["logits"], cap, data["logits"])


__model__ = Gemma2Model
