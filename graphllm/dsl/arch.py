"""ArchConfig: the one typed view of a model's configuration, read from an HF-style config dict.

config.json is read as it is; GGUF metadata is first converted to the same keys by io/gguf.py. This
module is the only place that interprets those keys: the built-in descriptions read ``ArchConfig``,
the reserved inputs (sin/cos sizes and tables) read ``Rope`` and ``context_limit``. A value that the
config does not state and graphllm has to choose is said once, in ``notes``. Bad values are a
ConfigError naming the key and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError

DEFAULT_ROPE_THETA = 10000.0
ROPE_SCALINGS = ("default", "linear", "llama3")
LAYER_TYPES = ("sliding_attention", "full_attention")
GEMMA3 = ("gemma3", "gemma3_text")
LOCAL_ROPE_INPUTS = ("sinLocal", "cosLocal")
_REQUIRED = object()


def _value(config: Mapping[str, Any], key: str, default: Any = _REQUIRED, where: str = "config") -> Any:
    """config[key] (None counts as absent); a missing key without a default is a ConfigError naming it."""
    value = config.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ConfigError(f"{where} has no {key!r}")
        return default
    return value


def _int(key: str, value: Any, minimum: int = 1) -> int:
    """value as an int >= minimum; anything else (a bool, a fraction, a string) is a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ConfigError(f"config {key} = {value!r}: expected an integer >= {minimum}")
    return int(value)


def _float(key: str, value: Any, minimum: float = 0.0) -> float:
    """value as a float > minimum; anything else is a ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > minimum:
        raise ConfigError(f"config {key} = {value!r}: expected a number > {minimum:g}")
    return float(value)


def head_dim(config: Mapping[str, Any]) -> int:
    """Per-head size: head_dim, else hidden_size / num_attention_heads (which must divide evenly)."""
    if config.get("head_dim") is not None:
        return _int("head_dim", config["head_dim"])
    hidden = _int("hidden_size", _value(config, "hidden_size"))
    heads = _int("num_attention_heads", _value(config, "num_attention_heads"))
    if hidden % heads:
        raise ConfigError(f"config hidden_size = {hidden} is not divisible by num_attention_heads = {heads}")
    return hidden // heads


def context_limit(config: Mapping[str, Any], notes: list[str] | None = None) -> int:
    """Positions a model can attend: max_positions (a model file sets it) wins, else max_position_embeddings
    or seq_length, which ``notes`` (when given) is told the model file did not set."""
    if config.get("max_positions") is not None:
        return _int("max_positions", config["max_positions"])
    for key in ("max_position_embeddings", "seq_length"):
        if config.get(key) is not None:
            if notes is not None:
                notes.append(f"max_positions not set by the model file: using config {key} = {config[key]}")
            return _int(key, config[key])
    raise ConfigError("config has no max_positions, max_position_embeddings or seq_length")


@dataclass(frozen=True)
class Rope:
    """Rotary embedding as the sin/cos inputs need it: rotated pairs per head (fastllm's rotaryDim),
    base theta, and the scaling of the frequencies (default, linear or llama3 with its parameters)."""

    pairs: int
    theta: float
    scaling: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 1.0
    original_max_positions: int = 0
    freq_factors: tuple[float, ...] = ()  # llama.cpp's rope_freqs: each pair's frequency is divided by its factor

    @classmethod
    def from_config(cls, config: Mapping[str, Any], notes: list[str] | None = None,
                    layer_type: str = "full_attention") -> "Rope":
        """Read rotary_dim / partial_rotary_factor, rope_theta and rope_scaling (or HF's rope_parameters, also
        per layer type); a "sliding_attention" rope reads rope_local_base_freq and no rope_scaling (Gemma 3)."""
        params = config.get("rope_parameters") or {}
        if any(t in params for t in LAYER_TYPES):
            params = params.get(layer_type) or {}
        local = layer_type == "sliding_attention"
        dim = head_dim(config)
        if config.get("rotary_dim"):
            pairs = _int("rotary_dim", config["rotary_dim"], 2) // 2
        else:
            factor = _float("partial_rotary_factor", config.get("partial_rotary_factor",
                                                                params.get("partial_rotary_factor", 1.0)))
            pairs = int(dim * factor) // 2
        if not 1 <= pairs <= dim // 2:
            raise ConfigError(f"config rotates {2 * pairs} dimensions of heads of {dim}: expected 2 to {dim}")
        theta = config.get("rope_local_base_freq" if local else "rope_theta", params.get("rope_theta"))
        if theta is None:
            theta = DEFAULT_ROPE_THETA
            if notes is not None:
                notes.append(f"config has no rope_theta: using {DEFAULT_ROPE_THETA:g}")
        theta = _float("rope_theta", theta)
        factors = tuple(_float("rope_freq_factors", f) for f in config.get("rope_freq_factors") or ())
        if factors and len(factors) != pairs:
            raise ConfigError(f"config rope_freq_factors has {len(factors)} values: expected {pairs}")
        scaling, where = (None if local else config.get("rope_scaling")), "config rope_scaling"
        if not scaling:
            scaling, where = params, "config rope_parameters"
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            return cls(pairs, theta, freq_factors=factors)
        if kind == "linear":
            return cls(pairs, theta, kind, _float("rope_scaling.factor", _value(scaling, "factor", where=where)),
                       freq_factors=factors)
        if kind == "llama3":
            factor, low, high = (_float(f"rope_scaling.{k}", _value(scaling, k, where=where))
                                 for k in ("factor", "low_freq_factor", "high_freq_factor"))
            old = _int("rope_scaling.original_max_position_embeddings",
                       _value(scaling, "original_max_position_embeddings", where=where))
            if low >= high:
                raise ConfigError(f"config rope_scaling low_freq_factor = {low} must be below high_freq_factor = {high}")
            return cls(pairs, theta, kind, factor, low, high, old, factors)
        raise ConfigError(f"rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_SCALINGS)})")


def local_rope(config: Mapping[str, Any], notes: list[str] | None = None) -> Rope | None:
    """The rope of sliding-window layers when it differs from the global one (Gemma 3's rope_local_base_freq,
    or rope_parameters per layer type), else None; it must rotate as many pairs."""
    params = config.get("rope_parameters") or {}
    if config.get("rope_local_base_freq") is None and "sliding_attention" not in params:
        return None
    rope, local = Rope.from_config(config), Rope.from_config(config, notes, "sliding_attention")
    if local.pairs != rope.pairs:
        raise ConfigError(f"config rotates {2 * local.pairs} dimensions on sliding layers and {2 * rope.pairs} "
                          f"on the others: expected the same")
    return None if local == rope else local


def _layer_types(config: Mapping[str, Any], model_type: str, layers: int) -> list[str] | None:
    """Which layers slide: layer_types, else the family's rule as transformers defines it (None: all)."""
    types = config.get("layer_types")
    if types is None and model_type in GEMMA3:
        period = _int("sliding_window_pattern", config.get("sliding_window_pattern", 6))
        types = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(layers)]
    if types is None and model_type == "gemma2":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if types is None and model_type == "qwen2" and config.get("max_window_layers") is not None:
        first = _int("max_window_layers", config["max_window_layers"], 0)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    if types is not None and (len(types) != layers or any(t not in LAYER_TYPES for t in types)):
        raise ConfigError(f"config layer_types = {types!r}: expected {layers} of {', '.join(LAYER_TYPES)}")
    return types


def _windows(config: Mapping[str, Any], model_type: str, layers: int) -> tuple[int | None, ...]:
    """Each layer's attention window: sliding_window, unless use_sliding_window is false or the layer's
    type is "full_attention"; None means full causal attention."""
    if not config.get("sliding_window") or config.get("use_sliding_window") is False:
        return (None,) * layers
    window = _int("sliding_window", config["sliding_window"])
    types = _layer_types(config, model_type, layers)
    return tuple(window if types is None or types[i] == "sliding_attention" else None for i in range(layers))


def _softcap(config: Mapping[str, Any], key: str) -> float | None:
    """A soft-cap (scores become cap * tanh(s / cap)); absent or 0 means none."""
    return _float(key, config[key]) if config.get(key) else None


@dataclass(frozen=True)
class ArchConfig:
    """The typed view of a model's configuration that the built-in descriptions read."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int | None  # None: the file does not say (the embedding's rows do)
    rms_norm_eps: float
    max_positions: int
    rope: Rope
    hidden_act: str
    windows: tuple[int | None, ...]  # per layer; None: full causal attention
    local_rope: Rope | None  # the rope of the layers in local_layers (Gemma 3), when it differs from rope
    local_layers: tuple[bool, ...]  # per layer: rotates with local_rope (sinLocal/cosLocal)
    attn_scale: float  # query_pre_attn_scalar ** -0.5, else head_dim ** -0.5
    attn_softcap: float | None
    final_softcap: float | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], notes: list[str] | None = None) -> "ArchConfig":
        """Read an HF-style config; the defaults graphllm picks for missing values are added to ``notes``."""
        model_type = str(config.get("model_type", "")).lower()
        heads = _int("num_attention_heads", _value(config, "num_attention_heads"))
        kv_heads = config.get("num_key_value_heads")
        if kv_heads is None:
            kv_heads = heads
            if notes is not None:
                notes.append(f"config has no num_key_value_heads: using num_attention_heads = {heads}")
        kv_heads = _int("num_key_value_heads", kv_heads)
        if heads % kv_heads:
            raise ConfigError(f"config num_attention_heads = {heads} is not a multiple of "
                              f"num_key_value_heads = {kv_heads}")
        layers = _int("num_hidden_layers", _value(config, "num_hidden_layers"))
        dim = head_dim(config)
        default_act = "gelu_pytorch_tanh" if model_type in ("gemma2", *GEMMA3) else "silu"
        vocab = config.get("vocab_size")
        local = local_rope(config, notes)
        types = _layer_types(config, model_type, layers) or ["full_attention"] * layers
        return cls(
            model_type=model_type,
            hidden_size=_int("hidden_size", _value(config, "hidden_size")),
            intermediate_size=_int("intermediate_size", _value(config, "intermediate_size")),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=dim,
            vocab_size=None if vocab is None else _int("vocab_size", vocab),
            rms_norm_eps=_float("rms_norm_eps", _value(config, "rms_norm_eps")),
            max_positions=context_limit(config),
            rope=Rope.from_config(config, notes),
            hidden_act=str(config.get("hidden_activation") or config.get("hidden_act") or default_act),
            windows=_windows(config, model_type, layers),
            local_rope=local,
            local_layers=tuple(local is not None and t == "sliding_attention" for t in types),
            attn_scale=_float("query_pre_attn_scalar", _value(config, "query_pre_attn_scalar", dim)) ** -0.5,
            attn_softcap=_softcap(config, "attn_logit_softcapping"),
            final_softcap=_softcap(config, "final_logit_softcapping"),
        )

    def rope_inputs(self, layer: int) -> tuple[str, str]:
        """The reserved sin/cos inputs that layer rotates q and k with: sinLocal/cosLocal on local-rope layers."""
        return LOCAL_ROPE_INPUTS if self.local_layers[layer] else ("sin", "cos")
