"""Tokenizer: the `tokenizers` library plus chat templates (io/chat_template.py) and UTF-8-safe streaming decode.

Built either from an HF folder (tokenizer.json, tokenizer_config.json, chat template files) or from
GGUF metadata, where the BPE model is rebuilt from the stored vocabulary, merges or scores.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from graphllm.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import jinja2

# Markers that end an assistant turn; one that the chat template writes counts as an eos token.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|END_OF_TURN_TOKEN|>", "</s>")

# GGUF token types (llama.cpp's llama_token_type)
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

# tokenizer.ggml.pre -> split regex applied before byte-level mapping (None: GPT-2's own regex)
_WORDS_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST_RE = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_RE = _WORDS_RE + r"\p{N}{1,3}" + _REST_RE  # numbers in groups of up to 3 digits
_QWEN2_RE = _WORDS_RE + r"\p{N}" + _REST_RE  # single digits
_PRE_REGEX = {"llama-bpe": _LLAMA3_RE, "llama3": _LLAMA3_RE, "qwen2": _QWEN2_RE}
_PRE_DIGITS = {"smollm", "starcoder", "refact", "codeshell"}  # single digits split off first


class Tokenizer:
    """Encode/decode text, render chat templates and know the model's special token ids."""

    def __init__(self, hf: HFTokenizer, *, bos_token_id: int | None, eos_token_ids: Iterable[int],
                 add_bos: bool, chat_template: str | None, tool_template: str | None = None) -> None:
        self.hf = hf
        self._bos = bos_token_id
        self._add_bos = add_bos and bos_token_id is not None
        self.chat_template = chat_template
        self.tool_template = tool_template  # a separate template for conversations with tools ("tool_use")
        self._templates: dict[str, jinja2.Template] = {}
        eos = list(dict.fromkeys(int(i) for i in eos_token_ids))
        for marker in _END_OF_TURN:
            marker_id = hf.token_to_id(marker)
            if chat_template and marker in chat_template and marker_id is not None and marker_id not in eos:
                eos.append(marker_id)
        self._eos = eos

    # ------------------------------------------------------------ properties
    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end generation: the model's eos plus end-of-turn tokens its chat template uses."""
        return list(self._eos)

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence id, if the model has one."""
        return self._bos

    @property
    def add_bos(self) -> bool:
        """Whether encode(add_special_tokens=True) prepends BOS (the model's config says so)."""
        return self._add_bos

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_text(self, token_id: int) -> str:
        """The vocabulary string of one id ('' if unknown)."""
        return self.hf.id_to_token(token_id) or ""

    # ------------------------------------------------------------ text
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; BOS is prepended only when asked and the model's config says so.

        encode_batch releases the GIL while it works (encode does not), so a long prompt tokenized in a
        server thread does not stall the event loop.
        """
        ids = self.hf.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens and self._add_bos and (not ids or ids[0] != self._bos):
            ids = [self._bos, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (special tokens kept unless asked otherwise, so decode(encode(s)) == s)."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = False) -> StreamDecoder:
        """A StreamDecoder for the ids generated after `prompt_ids`."""
        return StreamDecoder(self, prompt_ids, skip_special_tokens)

    @property
    def tools_template(self) -> str | None:
        """The template that renders a conversation with tools: the named "tool_use" one if the model has it
        (as transformers picks), else the chat template."""
        return self.tool_template or self.chat_template

    @functools.cached_property
    def supports_tools(self) -> bool:
        """Whether the tools template renders tool definitions (it reads the ``tools`` variable)."""
        source = self.tools_template
        if not source:
            return False
        from .chat_template import reads_variable

        return reads_variable(self._compiled(source), source, "tools")

    def _compiled(self, source: str) -> jinja2.Template:
        """A template of this model, compiled once."""
        if source not in self._templates:
            from .chat_template import compile_template  # jinja2 is loaded by the first conversation only

            self._templates[source] = compile_template(source)
        return self._templates[source]

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tools: list[dict[str, Any]] | None = None, **variables: Any) -> str:
        """Render `messages` with the model's chat template; ``tools`` (OpenAI's function list, as transformers
        passes it: None when absent) needs a template that reads them. Extra template variables pass through."""
        source = self.tools_template if tools else self.chat_template
        if not source:
            raise ConfigError("this model has no chat template; use plain completion instead")
        if tools and not self.supports_tools:
            raise ConfigError("this model's chat template does not support tools (it never renders `tools`)")
        context = {
            "bos_token": self.token_text(self._bos) if self._bos is not None else "",
            "eos_token": self.token_text(self._eos[0]) if self._eos else "",
            **variables,
        }
        from .chat_template import render

        return render(self._compiled(source), messages=messages, tools=tools,
                      add_generation_prompt=add_generation_prompt, **context)

    # ------------------------------------------------------------ saving
    def to_json(self) -> dict[str, Any]:
        """Everything this tokenizer is, as JSON-able data (from_json rebuilds it without the model file)."""
        return {"hf": self.hf.to_str(), "bos_token_id": self._bos, "eos_token_ids": self._eos,
                "add_bos": self._add_bos, "chat_template": self.chat_template, "tool_template": self.tool_template}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tokenizer:
        """The tokenizer to_json saved; ValueError when the data is not one."""
        try:
            hf = HFTokenizer.from_str(data["hf"])
            return cls(hf, bos_token_id=data["bos_token_id"], eos_token_ids=data["eos_token_ids"],
                       add_bos=data["add_bos"], chat_template=data["chat_template"],
                       tool_template=data["tool_template"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a saved tokenizer ({type(e).__name__}: {e})") from None
        except Exception as e:  # the Rust library raises plain Exception subclasses
            raise ValueError(f"not a saved tokenizer ({e})") from None

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_hf_folder(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load tokenizer.json, tokenizer_config.json, generation_config.json and any chat template file."""
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelLoadError(f"{folder}: no tokenizer.json (only fast tokenizers are supported)")
        try:
            hf = HFTokenizer.from_file(str(tok_file))
        except Exception as exc:  # the Rust library raises plain Exception subclasses
            raise ModelLoadError(f"{tok_file}: cannot load the tokenizer: {exc}") from exc
        tok_config = _read_json(folder / "tokenizer_config.json")
        gen_config = _read_json(folder / "generation_config.json")
        model_config = _read_json(folder / "config.json")

        def token_id(value: Any) -> int | None:
            text = value.get("content") if isinstance(value, dict) else value
            return hf.token_to_id(text) if isinstance(text, str) else None

        bos = _first_id(gen_config.get("bos_token_id"), model_config.get("bos_token_id"),
                        token_id(tok_config.get("bos_token")))
        eos = [*_ids(gen_config.get("eos_token_id")), *_ids(token_id(tok_config.get("eos_token"))),
               *_ids(model_config.get("eos_token_id"))]
        add_bos = tok_config.get("add_bos_token")
        if add_bos is None:  # infer from tokenizer.json's post-processor
            add_bos = bos is not None and hf.encode("a", add_special_tokens=True).ids[:1] == [bos]
        return cls(hf, bos_token_id=bos, eos_token_ids=eos, add_bos=bool(add_bos),
                   chat_template=_hf_chat_template(folder, tok_config),
                   tool_template=_hf_chat_template(folder, tok_config, "tool_use"))

    @classmethod
    def from_gguf(cls, fields: Mapping[str, Any]) -> Tokenizer:
        """Rebuild the tokenizer from GGUF metadata (a GGUFReader's `fields`)."""

        def get(key: str, default: Any = None) -> Any:
            f = fields.get(key)
            return default if f is None else f.contents()

        kind = get("tokenizer.ggml.model")
        tokens = get("tokenizer.ggml.tokens")
        if not tokens:
            raise ModelLoadError("the GGUF file has no tokenizer (tokenizer.ggml.tokens is missing)")
        types = get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if kind == "gpt2":
            hf = _gguf_bpe(tokens, get("tokenizer.ggml.merges") or [], get("tokenizer.ggml.pre", "default"))
        elif kind == "llama":
            scores = get("tokenizer.ggml.scores") or [0.0] * len(tokens)
            hf = _gguf_sentencepiece(tokens, scores, types, get("tokenizer.ggml.unknown_token_id"),
                                     get("tokenizer.ggml.add_space_prefix", True))
        else:
            raise ModelLoadError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
        hf.add_tokens([AddedToken(t, special=False, normalized=False)
                       for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, ty in zip(tokens, types) if ty in (_CONTROL, _UNKNOWN)])
        eos = [get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
        bos = get("tokenizer.ggml.bos_token_id")
        return cls(hf, bos_token_id=bos, eos_token_ids=[i for i in eos if i is not None],
                   add_bos=bool(get("tokenizer.ggml.add_bos_token", kind == "llama")),
                   chat_template=get("tokenizer.chat_template"),
                   tool_template=get("tokenizer.chat_template.tool_use"))


class StreamDecoder:
    """Incremental decoding of generated ids: each feed returns only newly completed text.

    Text ending in U+FFFD (an incomplete multi-byte character) is held back until the next id
    completes it. The last few prompt ids seed the window so that leading spaces decode right.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = False):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids[-6:])
        self._prefix = 0  # start of the decoding window
        self._read = len(self._ids)  # end of the text already returned

    def _text(self, start: int, stop: int | None = None) -> str:
        return self._tok.decode(self._ids[start:stop], skip_special_tokens=self._skip)

    def feed(self, token_id: int) -> str:
        """Add one generated id; return the text it completes ('' while a character is incomplete)."""
        self._ids.append(int(token_id))
        done = self._text(self._prefix, self._read)
        full = self._text(self._prefix)
        if len(full) <= len(done) or full.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full[len(done):]

    def flush(self) -> str:
        """Whatever is still held back at the end of generation (possibly with U+FFFD)."""
        done = self._text(self._prefix, self._read)
        full = self._text(self._prefix)
        self._prefix = self._read = len(self._ids)
        return full[len(done):] if full.startswith(done) else ""


# ---------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, {} if absent; malformed JSON -> ConfigError naming file and line."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    return data if isinstance(data, dict) else {}


def _ids(value: Any) -> list[int]:
    """An id or list of ids from a config value (None -> [])."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _first_id(*values: Any) -> int | None:
    """The first id among config values that is set."""
    return next((ids[0] for ids in map(_ids, values) if ids), None)


def _hf_chat_template(folder: Path, tok_config: Mapping[str, Any], name: str = "default") -> str | None:
    """The chat template from chat_template.jinja, chat_template.json or tokenizer_config.json; a name other than
    "default" asks for that named template only (None if the model has no such one)."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8") if name == "default" else None
    template = _read_json(folder / "chat_template.json").get("chat_template") or tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get(name) or (next(iter(named.values()), None) if name == "default" else None)
    elif name != "default":
        return None
    return template if isinstance(template, str) else None


def _gguf_bpe(tokens: list[str], merges: list[str], pre: str) -> HFTokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) from GGUF tokens and merges."""
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    hf = HFTokenizer(models.BPE(vocab, pairs, ignore_merges=pre in ("llama-bpe", "llama3")))
    regex = _PRE_REGEX.get(pre)
    if regex is not None:
        parts = [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    else:
        parts = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if pre in _PRE_DIGITS:
            parts.insert(0, pre_tokenizers.Digits(individual_digits=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(parts)
    hf.decoder = decoders.ByteLevel()
    return hf


def _score_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by SentencePiece scores: every split of a piece into two pieces, best score first."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[str, str, float]] = []
    for piece, score in zip(tokens, scores):
        splits = ((piece[:k], piece[k:]) for k in range(1, len(piece)))
        local = [(left, right, score) for left, right in splits if left in vocab and right in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: m[2], reverse=True)
    return [(left, right) for left, right, _ in merges]


def _gguf_sentencepiece(tokens: list[str], scores: list[float], types: list[int], unk_id: int | None,
                        add_space_prefix: bool) -> HFTokenizer:
    """A SentencePiece-style BPE tokenizer (Llama 1/2, Mistral) with byte fallback from GGUF scores."""
    normal = [t if ty not in (_CONTROL, _UNKNOWN) else "" for t, ty in zip(tokens, types)]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = tokens[unk_id] if unk_id is not None else None
    hf = HFTokenizer(models.BPE(vocab, _score_merges(normal, scores), unk_token=unk, fuse_unk=True, byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                prepend_scheme="first" if add_space_prefix else "never", split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    hf.decoder = decoders.Sequence(steps)
    return hf
