"""Constrained decoding: a grammar (JSON schema, any JSON object, Lark, regex) as a per-token mask of allowed ids.

The engine is llguidance (Rust, the one llama.cpp uses; no torch). xgrammar (vLLM, SGLang) was the other
candidate, but its wheel requires torch, transformers and triton, which decided it. Measured with
SmolLM2-135M's tokenizer (49152 ids): building llguidance's tokenizer 0.19 s (once per loaded tokenizer),
compiling a small schema about 1 ms cold (its lexer is built lazily) and 0.1 ms cached; a per-token mask
during generation: llguidance's part median 10 us but mean 90 us (lexer states are built as they are met,
a few masks take milliseconds), applying it to the logits about 20 us. Batched decode of 8 sequences
(benchmarks/grammar_bench.py, greedy, compiled executor): the schema costs about 3 % of the time per
token (median of paired rounds on a quiet 2-core machine; 6 % in a noisier run).
Compiled grammars are cached per spec (LRU) and each sequence gets a cheap copy of the compiled matcher.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GenerationError

GRAMMAR_KINDS = ("json_schema", "json_object", "lark", "regex")
GRAMMAR_CACHE_SIZE = 64  # compiled grammars kept per tokenizer
# compact JSON: no free whitespace, so a model cannot pad its output with blanks until max_tokens
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_JSON_OBJECT = '{"type": "object"}'
# llguidance's stop codes for a matcher that cannot go on, in words
STOP_REASONS = {"NoExtensionBias": "no token can continue the output (the grammar admits no text here, e.g. a schema "
                                   "whose $ref loops without a base case)"}


@dataclass(frozen=True)
class GrammarSpec:
    """What a sequence's output must match: ``kind`` and its ``source`` (the schema as JSON text, Lark text
    (or llama.cpp's GBNF, converted), or the regex; empty for json_object)."""

    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise GenerationError(f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, got {self.kind!r}")
        if self.kind != "json_object" and not self.source.strip():
            raise GenerationError(f"a {self.kind} grammar needs a non-empty source")


class GrammarMatcher:
    """One sequence's grammar state: masks its logits before sampling, consumes the sampled token after."""

    __slots__ = ("_matcher", "_vocab", "_words", "_out")

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab = vocab_size
        self._words = np.zeros((vocab_size + 31) // 32, np.int32)  # llguidance's bitmask, one bit per id
        self._out: np.ndarray | None = None  # the masked logits, rewritten every token

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every id the grammar forbids next (and any id past the vocabulary) at -inf, in this
        matcher's own buffer (valid until the next call; the logits are left as they are)."""
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if m.is_error():
            raise GenerationError(f"the grammar failed: {_one_line(m.get_error())}")
        n = min(self._vocab, logits.shape[-1])
        allowed = np.unpackbits(self._words.view(np.uint8), count=n, bitorder="little").view(bool)
        out = self._out
        if out is None or out.shape != logits.shape or out.dtype != logits.dtype:
            out = self._out = np.empty_like(logits)
        out.fill(-np.inf)
        np.copyto(out[:n], logits[:n], where=allowed)
        return out

    def consume(self, token: int) -> None:
        """Advance past the sampled token (one the mask allowed)."""
        if not self._matcher.consume_token(token):
            raise GenerationError(f"the grammar rejected token {token}: {_one_line(self._matcher.get_error())}")

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more: the sequence ends."""
        return self._matcher.is_stopped()


class _Bridge:
    """llguidance's view of one graphllm tokenizer and the grammars compiled for it (LRU)."""

    def __init__(self, tokenizer: Any) -> None:
        import llguidance

        self.tokenizer = llguidance.LLTokenizer(tokenizer.hf.to_str(), n_vocab=tokenizer.vocab_size,
                                                eos_token=tokenizer.eos_token_ids or None)
        self.vocab_size = self.tokenizer.vocab_size
        self._compiled: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compiled(self, spec: GrammarSpec) -> Any:
        """The compiled matcher of ``spec`` in its start state (never advanced: sequences take copies)."""
        with self._lock:
            matcher = self._compiled.get(spec)
            if matcher is not None:
                self._compiled.move_to_end(spec)
                return matcher
        matcher = _compile(self.tokenizer, spec)
        with self._lock:
            self._compiled[spec] = matcher
            while len(self._compiled) > GRAMMAR_CACHE_SIZE:
                self._compiled.popitem(last=False)
        return matcher


_bridges: weakref.WeakKeyDictionary[Any, _Bridge] = weakref.WeakKeyDictionary()
_bridges_lock = threading.Lock()


def _bridge(tokenizer: Any) -> _Bridge:
    """The bridge of this tokenizer, built on first use (a fraction of a second for a large vocabulary)."""
    with _bridges_lock:
        bridge = _bridges.get(tokenizer)
        if bridge is None:
            bridge = _bridges[tokenizer] = _Bridge(tokenizer)
        return bridge


def _compile(tokenizer: Any, spec: GrammarSpec) -> Any:
    """llguidance's matcher for ``spec``; GenerationError with the engine's message when it does not compile."""
    from llguidance import LLMatcher

    try:
        if spec.kind in ("json_schema", "json_object"):
            grammar = LLMatcher.grammar_from_json_schema(spec.source or ANY_JSON_OBJECT, defaults=JSON_OPTIONS)
        elif spec.kind == "lark":
            grammar = LLMatcher.grammar_from_lark(_as_lark(spec.source))
        else:
            grammar = LLMatcher.grammar_from_regex(spec.source)
    except ValueError as exc:
        raise GenerationError(f"the {spec.kind} grammar is invalid: {_one_line(str(exc))}") from None
    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise GenerationError(f"the {spec.kind} grammar is invalid: {_one_line(matcher.get_error())}")
    return matcher


def _as_lark(source: str) -> str:
    """Lark text as it is; llama.cpp's GBNF (``root ::= ...``) converted to Lark by llguidance's converter."""
    from llguidance.gbnf_to_lark import any_to_lark

    try:
        return any_to_lark(source)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare Exception for a bad grammar
        raise GenerationError(f"the lark grammar is invalid (read as GBNF): {_one_line(str(exc))}") from None


def _one_line(message: str) -> str:
    """An engine message on one line, without the source lines and carets it draws under them, nor the parser state
    and grammar it appends (``<state>...``); llguidance's stop codes in words."""
    message = message.split("<state>", 1)[0]
    lines = (line.strip() for line in message.splitlines())
    text = " ".join(line for line in lines if line.strip("^ ") and not re.match(r"\d+ \|", line))
    return STOP_REASONS.get(text, text)


def compile_grammar(tokenizer: Any, spec: GrammarSpec | None) -> None:
    """Build llguidance's view of this tokenizer (once) and compile ``spec`` into the cache, now (GenerationError
    if it does not compile); with None, only the view (which token_bytes uses)."""
    bridge = _bridge(tokenizer)
    if spec is not None:
        bridge.compiled(spec)


def grammar_matcher(tokenizer: Any, spec: GrammarSpec) -> GrammarMatcher:
    """A fresh matcher of ``spec`` for one sequence (the compiled grammar is cached per spec)."""
    bridge = _bridge(tokenizer)
    return GrammarMatcher(bridge.compiled(spec).deep_copy(), bridge.vocab_size)


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """The exact bytes one token stands for (a token may hold part of a UTF-8 character)."""
    return _bridge(tokenizer).tokenizer.decode_bytes([token])
