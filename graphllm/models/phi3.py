"""Phi-3: fused qkv_proj (split into q, k, v) and gate_up_proj (Swiglu), partial rotary, sliding window."""

from graphllm.dsl.graph import ComputeGraph


class Phi3Model(ComputeGraph):
    def build(self):
        weight, data, arch = self.weight, self.data, self.arch
        head_dim, eps, pairs = arch.head_dim, arch.rms_norm_eps, arch.rope.pairs
        q_size, kv_size = arch.num_heads * head_dim, arch.num_kv_heads * head_dim
        self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["hiddenStates"])
        self.DataTypeAs(data["hiddenStates"], data["atype"])
        for i in range(arch.num_layers):
            layer = weight["model.layers."][i]
            self.RMSNorm(data["hiddenStates"], layer[".input_layernorm.weight"], eps, data["attenInput"])
            self.Linear(data["attenInput"], layer[".self_attn.qkv_proj.weight"], layer[".self_attn.qkv_proj.bias"],
                        data["qkv"])
            self.Split(data["qkv"], -1, 0, q_size, data["q"])
            self.Split(data["qkv"], -1, q_size, q_size + kv_size, data["k"])
            self.Split(data["qkv"], -1, q_size + kv_size, q_size + 2 * kv_size, data["v"])
            for x in ("q", "k", "v"):
                self.ExpandHead(data[x], head_dim)
            self.LlamaRotatePosition2D(data["q"], data["positionIds"], data["sin"], data["cos"], pairs)
            self.LlamaRotatePosition2D(data["k"], data["positionIds"], data["sin"], data["cos"], pairs)
            self.FusedAttention(data["q"], data["pastKey."][i], data["pastValue."][i], data["k"], data["v"],
                                data["attenInput"], data["attentionMask"], data["attenOutput"], data["seqLens"],
                                arch.attn_scale, window=arch.windows[i])
            self.Linear(data["attenOutput"], layer[".self_attn.o_proj.weight"], layer[".self_attn.o_proj.bias"],
                        data["attenLastOutput"])
            self.AddTo(data["hiddenStates"], data["attenLastOutput"])
            self.RMSNorm(data["hiddenStates"], layer[".post_attention_layernorm.weight"], eps, data["attenInput"])
            self.Linear(data["attenInput"], layer[".mlp.gate_up_proj.weight"], None, data["gateUp"])
            self.Swiglu(data["gateUp"], data["w1"])  # silu(gate) * up: gate is the first half
            self.Linear(data["w1"], layer[".mlp.down_proj.weight"], None, data["w2"])
            self.AddTo(data["hiddenStates"], data["w2"])
        self.SplitLastTokenStates(data["hiddenStates"], data["seqLens"], data["lastTokensStates"])
        self.RMSNorm(data["lastTokensStates"], weight["model.norm.weight"], eps, data["lastTokensStates"])
        self.Linear(data["lastTokensStates"], weight["lm_head.weight"], weight["lm_head.bias"], data["logits"])


__model__ = Phi3Model
