"""Read a GGUF file: an HF-style config from its metadata and its tensors under Hugging Face names.

Architectures (`_ARCHS`): llama (Llama 1-3.x, Mistral), qwen2, qwen3, phi3, gemma2, gemma3, each read as
llama.cpp's converter wrote it (permuted Q/K rows, Gemma's 1 + w norms, Llama 3's rope_freqs factors).

Tensors stay memory-mapped as raw GGML blocks and are read (`GGUFTensor.raw()`: a copy read with plain
reads, so the mapping's pages never become resident beside the packed weights) or dequantized to float32
only when asked. Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, F16, BF16 and F32 are decoded here
(the codegen mirrors these block layouts, and F16/BF16 matrices can be handed over as they are:
`GGUFTensor.stored()`); other GGML types (Q2_K, Q3_K, IQ*, ...) fall back to `gguf.quants.dequantize`
at load, with a warning.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, LlamaFileType
from gguf import quants as gguf_quants
from gguf.gguf_reader import ReaderField

from graphllm.dsl import qformats
from graphllm.dsl.arch import ArchConfig
from graphllm.errors import ConfigError, ModelLoadError
from graphllm.io.cache import digest, read_checked_json, write_checked_json
from graphllm.io.download import graphllm_home
from graphllm.io.weights import TensorWeights

QT = GGMLQuantizationType

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_ATTENTION = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
}
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_MLP = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_LLAMA_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_GEMMA_NORMS = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3 = {
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_up": "mlp.gate_up_proj",  # gate rows first, then up: HF's fused layout
    "ffn_down": "mlp.down_proj",
}


@dataclass(frozen=True)
class _Arch:
    """How llama.cpp's converter wrote one GGUF architecture: the HF family, whether Q/K rows were
    permuted, each layer tensor's HF name (all of them required), and the shift added to norm weights."""

    model_type: str
    hf_class: str
    permuted: bool
    layer_names: Mapping[str, str]
    norm_shift: float = 0.0  # Gemma: the file holds 1 + w, the HF checkpoint w


_ARCHS: dict[str, _Arch] = {
    "llama": _Arch("llama", "LlamaForCausalLM", True, _ATTENTION | _MLP | _LLAMA_NORMS),  # also Mistral's
    "qwen2": _Arch("qwen2", "Qwen2ForCausalLM", False, _ATTENTION | _MLP | _LLAMA_NORMS),
    "qwen3": _Arch("qwen3", "Qwen3ForCausalLM", False, _ATTENTION | _QK_NORMS | _MLP | _LLAMA_NORMS),
    "phi3": _Arch("phi3", "Phi3ForCausalLM", False, _PHI3 | _LLAMA_NORMS),
    "gemma2": _Arch("gemma2", "Gemma2ForCausalLM", False, _ATTENTION | _MLP | _GEMMA_NORMS, 1.0),
    "gemma3": _Arch("gemma3_text", "Gemma3ForCausalLM", False, _ATTENTION | _QK_NORMS | _MLP | _GEMMA_NORMS, 1.0),
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_REQUIRED = ("token_embd.weight", "output_norm.weight")
_LLAMA3_FACTORS = "rope_freqs.weight"  # llama.cpp's form of Llama 3.x rope scaling: per-pair frequency divisors
_GEMMA_27B_LAYERS = {"gemma2": (46,), "gemma3": (62,)}
_UNSUPPORTED_TENSORS = {"rope_factors_long.weight": "LongRoPE (Phi-3 128k) rope scaling"}


class _FastReader(GGUFReader):
    """GGUFReader over a plain ndarray view of its memmap.

    Slicing an `np.memmap` subclass costs ~10 us per slice; parsing the 100k-string vocabulary
    that way takes 6-8 s. A base-class view of the same mapping parses in about 1 s.
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, mm: np.ndarray) -> None:
        self._mmap = mm
        self._plain = mm.view(np.ndarray)


# ---------------------------------------------------------------- block decoders
_QFORMATS = {QT.Q8_0: "q8_0", QT.Q4_0: "q4_0", QT.Q4_1: "q4_1", QT.Q5_0: "q5_0", QT.Q5_1: "q5_1",
             QT.Q4_K: "q4_k", QT.Q5_K: "q5_k", QT.Q6_K: "q6_k"}
_FLOATS = {QT.F32: np.dtype(np.float32), QT.F16: np.dtype(np.float16), QT.BF16: np.dtype(ml_dtypes.bfloat16)}


def qformat_of(ggml_type: GGMLQuantizationType) -> str | None:
    """graphllm's name for a GGML block type it computes on without dequantizing (see dsl/qformats)."""
    return _QFORMATS.get(ggml_type)


def dequantize_raw(raw: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Decode raw GGML bytes [..., row_bytes] to float32 [..., row_elems] (bit-exact with gguf's)."""
    if ggml_type == QT.F32:
        return raw.view(np.float32)
    if ggml_type == QT.F16:
        return raw.view(np.float16).astype(np.float32)
    if ggml_type == QT.BF16:  # the top 16 bits of a float32
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    name = _QFORMATS.get(ggml_type)
    if name is None:
        return gguf_quants.dequantize(raw, ggml_type)
    rows = int(np.prod(raw.shape[:-1], dtype=np.int64))
    return qformats.dequantize(raw, name, (rows, -1)).reshape(*raw.shape[:-1], -1)


@functools.cache
def _can_dequantize(ggml_type: GGMLQuantizationType) -> bool:
    """Whether this module or gguf's fallback can decode `ggml_type` (probes one zero block)."""
    if ggml_type in _FLOATS or ggml_type in _QFORMATS:
        return True
    try:
        gguf_quants.dequantize(np.zeros((1, GGML_QUANT_SIZES[ggml_type][1]), np.uint8), ggml_type)
    except (NotImplementedError, KeyError):
        return False
    return True


def unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's `permute(w, n_head)` of Q/K rows (HF row i = file row idx[i])."""
    half = n_rows // n_head // 2
    return np.arange(n_rows).reshape(n_head, half, 2).swapaxes(1, 2).reshape(-1)


# ---------------------------------------------------------------- tensors
class _FileMap:
    """A GGUF file memory-mapped read-only as uint8 (the tensors' `data` are views of it), read with plain reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.array = np.memmap(path, np.uint8, mode="r")

    def read(self, view: np.ndarray) -> np.ndarray:
        """A copy of `view` (a slice of `array`) read from the file, never through the mapping: its pages are
        not made resident, so a loader packing every weight holds the packed copy only, not the file too."""
        out = np.empty(view.shape, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(view.ctypes.data - self.array.ctypes.data)
            if f.readinto(memoryview(out.reshape(-1))) != out.nbytes:
                raise ModelLoadError(f"{self.path}: the file was truncated while it was being read")
        return out


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: raw GGML blocks, memory-mapped, plus what is needed to decode them."""

    name: str  # Hugging Face name
    gguf_name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # HF layout: [out, in] for matrices
    data: np.ndarray = field(repr=False)  # uint8 [rows, row_bytes] in file row order
    n_head: int | None = None  # set when the file's rows are llama.cpp-permuted Q/K rows
    shift: float = 0.0  # subtracted from every value: the file holds w + shift (Gemma's norms)
    source: _FileMap | None = field(default=None, repr=False, compare=False)  # the file `data` is a view of

    @property
    def qformat(self) -> str | None:
        """The block format graphllm computes on directly, if this tensor has one."""
        return qformat_of(self.ggml_type) if len(self.shape) == 2 else None

    @property
    def float_dtype(self) -> str | None:
        """float32, float16 or bfloat16 when the file holds this tensor's numbers as they are, else None."""
        return _FLOATS[self.ggml_type].name if self.ggml_type in _FLOATS and not self.shift else None

    @property
    def block_size(self) -> int:
        """Elements per GGML block (1 for F32/F16/BF16)."""
        return GGML_QUANT_SIZES[self.ggml_type][0]

    @property
    def type_size(self) -> int:
        """Bytes per GGML block."""
        return GGML_QUANT_SIZES[self.ggml_type][1]

    def span(self) -> tuple[Path, int, int] | None:
        """The file, offset and length of this tensor's bytes as the file holds them (None off a file)."""
        if self.source is None:
            return None
        return self.source.path, self.data.ctypes.data - self.source.array.ctypes.data, self.data.nbytes

    def raw(self) -> np.ndarray:
        """Raw blocks as uint8 [rows, row_bytes] in HF row order: a copy (read from the file, not the mapping)."""
        rows = self.data.copy() if self.source is None else self.source.read(self.data)
        return rows if self.n_head is None else rows[unpermute_rows(rows.shape[0], self.n_head)]

    def load(self) -> np.ndarray:
        """The tensor as float32 (what the weights mapping returns)."""
        return self.dequantize()

    def stored(self) -> np.ndarray:
        """An F32/F16/BF16 tensor's numbers as stored (float32, float16, ml_dtypes.bfloat16), not widened."""
        return self.raw().view(_FLOATS[self.ggml_type]).reshape(self.shape)

    def dequantize(self) -> np.ndarray:
        """The tensor as float32 in HF layout (a new array)."""
        try:
            values = dequantize_raw(self.raw(), self.ggml_type).reshape(self.shape)
            return values - np.float32(self.shift) if self.shift else values
        except NotImplementedError as exc:
            raise ModelLoadError(
                f"tensor {self.gguf_name!r} has GGML type {self.ggml_type.name}, which cannot be dequantized"
            ) from exc


# ---------------------------------------------------------------- metadata
def field_value(fields: Mapping[str, ReaderField], key: str, default: Any = None) -> Any:
    """A metadata value as a Python object (str, int, float, bool or list), or `default` if absent."""
    f = fields.get(key)
    return default if f is None else f.contents()


def _short_float(x: float) -> float:
    """The shortest decimal that rounds to the same float32 (9.99999974e-06 -> 1e-05, as in config.json)."""
    return float(str(np.float32(x)))


def hf_tensor_name(gguf_name: str, arch: str = "llama") -> str:
    """The Hugging Face name of a GGUF tensor of a GGUF architecture; names with no HF counterpart are kept."""
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    m, names = _LAYER_RE.fullmatch(gguf_name), _ARCHS[arch].layer_names
    if m and m.group(2) in names:
        return f"model.layers.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
    return gguf_name


def build_config(fields: Mapping[str, ReaderField], tensor_names: set[str], path: Path) -> dict[str, Any]:
    """An HF-style config dict for a GGUF of one of `_ARCHS` (`tensor_names` are GGUF names): the metadata
    renamed, with no defaults of its own but llama.cpp's (ArchConfig, which reads it, applies and notes those)."""
    arch = field_value(fields, "general.architecture")
    if arch not in _ARCHS:
        raise ModelLoadError(
            f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(_ARCHS))})"
        )
    model_type, hf_class = _ARCHS[arch].model_type, _ARCHS[arch].hf_class

    def get(key: str, default: Any = ...) -> Any:
        value = field_value(fields, f"{arch}.{key}", default)
        if value is ...:
            raise ConfigError(f"{path}: GGUF metadata lacks the required key '{arch}.{key}'")
        return value

    tokens = field_value(fields, "tokenizer.ggml.tokens")
    vocab_size = get("vocab_size", None) or (len(tokens) if tokens else None)
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [hf_class],
        "hidden_act": "gelu_pytorch_tanh" if _ARCHS[arch].norm_shift else "silu",
        "hidden_size": int(get("embedding_length")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": int(get("attention.head_count")),
        "rms_norm_eps": _short_float(get("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(get("context_length")),
        "vocab_size": int(vocab_size) if vocab_size else None,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
    }
    kv_heads, theta = get("attention.head_count_kv", None), get("rope.freq_base", None)
    if kv_heads is not None:  # absent: ArchConfig's default (and note), as for a config.json without it
        config["num_key_value_heads"] = int(kv_heads)
    if theta is not None:
        config["rope_theta"] = _short_float(theta)
    rope_dims = get("rope.dimension_count", None)
    head_dim = get("attention.key_length", None) or (None if arch == "phi3" else rope_dims)
    if head_dim is not None:
        config["head_dim"] = int(head_dim)
    if arch == "phi3" and rope_dims is not None:  # partial rotary
        config["rotary_dim"] = int(rope_dims)
    window = get("attention.sliding_window", None)
    if window:  # Phi-3 writes 0 for none; llama.cpp's Mistral conversion writes none at all
        config["sliding_window"] = int(window)
    config.update(_gemma_config(arch, get, config))
    scaling = get("rope.scaling.type", None)
    if scaling not in (None, "none"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": _short_float(get("rope.scaling.factor", 1.0))}
        original = get("rope.scaling.original_context_length", None)
        if original is not None:
            config["rope_scaling"]["original_max_position_embeddings"] = int(original)
    for key in ("bos", "eos", "padding"):
        value = field_value(fields, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(value)
    return config


def _gemma_config(arch: str, get: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """Gemma 2 / 3 keys: soft-caps, the query scale, and Gemma 3's local RoPE base and layer pattern, with
    llama.cpp's defaults where its converter writes nothing (query_pre_attn_scalar, the local base, the pattern)."""
    if arch not in ("gemma2", "gemma3"):
        return {}
    out = {key: float(get(key)) for key in ("attn_logit_softcapping", "final_logit_softcapping")
           if get(key, None)}
    scale = get("attention.scale", None)
    layers, hidden, heads = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
    if scale:
        out["query_pre_attn_scalar"] = _short_float(float(scale) ** -2)
    elif layers in _GEMMA_27B_LAYERS[arch]:  # llama.cpp: the 27B models scale queries by (hidden / heads) ** -0.5
        out["query_pre_attn_scalar"] = hidden // heads
    if arch == "gemma3":
        out["rope_local_base_freq"] = _short_float(get("rope.freq_base_swa", 10000.0))
        pattern = get("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            out["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            out["sliding_window_pattern"] = int(pattern)
    return out


def _file_type(fields: Mapping[str, ReaderField], tensors: Mapping[str, GGUFTensor]) -> str:
    """'gguf:<type>' from general.file_type, else from the commonest type among the matrices."""
    code = field_value(fields, "general.file_type")
    try:
        name = LlamaFileType(code).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        counts = Counter(t.ggml_type.name for t in tensors.values() if len(t.shape) == 2)
        name = counts.most_common(1)[0][0] if counts else "unknown"
    return f"gguf:{name}"


# ---------------------------------------------------------------- the file
@dataclass
class GGUFModel:
    """An opened GGUF file: metadata fields, HF config, tensors (raw) and weights (lazy float32)."""

    path: Path
    fields: Mapping[str, ReaderField]
    config: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    weights: TensorWeights
    file_type: str


def _read(path: Path) -> GGUFReader:
    """Parse the GGUF header, turning every parse failure into a ModelLoadError that names the file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelLoadError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        return _FastReader(path)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, EOFError):
        raise ModelLoadError(f"{path}: the GGUF file is truncated or corrupt ({path.stat().st_size} bytes, its header "
                             f"describes more): download it again") from None


def _check_complete(tensors: Mapping[str, GGUFTensor], arch: str, layers: int, path: Path) -> None:
    """Every tensor a model of this GGUF architecture and `layers` layers needs is present, and none that
    graphllm cannot compute with; names the first such tensor."""
    gguf_names = {t.gguf_name for t in tensors.values()}
    for name, what in _UNSUPPORTED_TENSORS.items():
        if name in gguf_names:
            raise ModelLoadError(f"{path}: the GGUF file has {name!r}: {what} is not supported")
    required = list(_GLOBAL_REQUIRED) + [f"blk.{i}.{name}.weight" for i in range(layers)
                                         for name in _ARCHS[arch].layer_names]
    for name in required:
        if name not in gguf_names:
            raise ModelLoadError(f"{path}: the GGUF file lacks the tensor {name!r} ({hf_tensor_name(name, arch)})")


def _warn_dequantized(tensors: Mapping[str, GGUFTensor], path: Path) -> None:
    """One warning naming the GGML types no kernel computes on: they load as float32 (several times their bytes)."""
    counts = Counter(t.ggml_type.name for t in tensors.values() if t.ggml_type not in _FLOATS and t.qformat is None)
    if counts:
        kinds = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
        warnings.warn(f"{path.name}: dequantizing {kinds} tensor(s) to float32 at load (graphllm's kernels compute on "
                      f"F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K)", stacklevel=3)


class _StoredField:
    """A metadata value read back from the index cache; answers `contents()` like a ReaderField."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def contents(self) -> Any:
        return self.value


@dataclass(frozen=True)
class _TensorEntry:
    """What open_gguf needs of one tensor: GGUF name, type, shape (GGUF order) and its bytes."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: np.ndarray
    data: np.ndarray


_INDEX_VERSION = 1


def _index_path(path: Path) -> Path:
    """Where the parsed header of this exact file (path, size, mtime) is cached."""
    st = path.stat()
    key = digest(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}", 24)
    return graphllm_home() / "gguf-index" / f"{key}.json"


def _load_index(index: Path) -> tuple[dict[str, Any], list[list[Any]]] | None:
    """The cached header (checked JSON, io/cache.py), or None when absent; a damaged one warns and is rebuilt."""
    try:
        doc = read_checked_json(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        warnings.warn(f"the GGUF index {index} is damaged ({e}); rebuilding it", stacklevel=3)
        return None
    if doc.get("version") != _INDEX_VERSION or not isinstance(doc.get("values"), dict) \
            or not isinstance(doc.get("table"), list):
        warnings.warn(f"the GGUF index {index} is of another version; rebuilding it", stacklevel=3)
        return None
    return doc["values"], doc["table"]


def _save_index(index: Path, values: dict[str, Any], table: list[list[Any]]) -> None:
    """Keep the parsed header as checked JSON (a read-only cache, or a value JSON cannot hold, only costs time)."""
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        write_checked_json(index, {"version": _INDEX_VERSION, "values": values, "table": table})
    except (OSError, TypeError, ValueError):
        pass


def _read_indexed(path: Path) -> tuple[Mapping[str, Any], list[_TensorEntry], _FileMap]:
    """Metadata, tensor table and the file's mapping: the header from the index cache, else parsed with gguf's
    reader and cached.

    gguf's reader walks every tokenizer string in Python (over a second for a 49k vocabulary); the
    cache makes later opens of the same file take milliseconds. The cache is JSON with a checksum, never
    code: a damaged entry is parsed again.
    """
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    index = _index_path(path)
    cached = _load_index(index)
    if cached is not None:
        values, table = cached
    else:
        reader = _read(path)
        values = {k: _plain(f.contents()) for k, f in reader.fields.items()}
        table = [[t.name, int(t.tensor_type), t.shape.tolist(), int(t.data_offset), int(t.n_bytes)]
                 for t in reader.tensors]
        _save_index(index, values, table)
    source = _FileMap(path)
    entries = []
    for name, tt, shape, offset, nbytes in table:
        if offset + nbytes > source.array.size:
            raise ModelLoadError(f"{path}: not a valid GGUF file (truncated: tensor {name!r} ends past the file)")
        entries.append(_TensorEntry(name, GGMLQuantizationType(tt), np.asarray(shape),
                                    source.array[offset:offset + nbytes]))
    return {k: _StoredField(v) for k, v in values.items()}, entries, source


def _plain(value: Any) -> Any:
    """A metadata value as plain Python (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def open_gguf(path: str | os.PathLike[str]) -> GGUFModel:
    """Open a .gguf file (memory-mapped): config, raw tensors and lazily dequantized HF-named weights."""
    path = Path(path)
    fields, entries, source = _read_indexed(path)
    gguf_names = {t.name for t in entries}
    config = build_config(fields, gguf_names, path)
    arch = field_value(fields, "general.architecture")
    family = _ARCHS[arch]
    heads = {"attn_q": config["num_attention_heads"],
             "attn_k": config.get("num_key_value_heads", config["num_attention_heads"])}
    tensors: dict[str, GGUFTensor] = {}
    for t in entries:
        if not _can_dequantize(t.tensor_type):
            raise ModelLoadError(
                f"{path}: tensor {t.name!r} has GGML type {t.tensor_type.name}, which graphllm cannot decode "
                f"(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, and what gguf.quants.dequantize decodes)"
            )
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        # one data row per HF row; a 1-D tensor of per-element type gets a row per element
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        if len(shape) == 1 and GGML_QUANT_SIZES[t.tensor_type][0] == 1:
            rows = shape[0]
        data = t.data.view(np.uint8).reshape(rows, -1)
        m = _LAYER_RE.fullmatch(t.name)
        n_head = heads.get(m.group(2)) if (m and family.permuted) else None
        if n_head is not None and rows != shape[0]:
            raise ModelLoadError(f"{path}: cannot un-permute the quantized 1-D tensor {t.name!r}")
        name = hf_tensor_name(t.name, arch)
        shift = family.norm_shift if name.endswith("norm.weight") else 0.0
        tensors[name] = GGUFTensor(name, t.name, t.tensor_type, shape, data, n_head, shift, source)
    if _LLAMA3_FACTORS in tensors:
        config["rope_freq_factors"] = [float(f) for f in tensors[_LLAMA3_FACTORS].load()]
    try:
        layers = ArchConfig.from_config(config).num_layers
    except ConfigError as e:
        raise ConfigError(f"{path}: GGUF metadata: {e}") from None
    _check_complete(tensors, arch, layers, path)
    _warn_dequantized(tensors, path)
    return GGUFModel(path, fields, config, tensors, TensorWeights(tensors), _file_type(fields, tensors))
