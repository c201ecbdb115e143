"""Token sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import GenerationError
from .grammar import GrammarMatcher, GrammarSpec

# max_tokens defaults, the only place they are written (None: until the context is full)
DEFAULT_MAX_TOKENS = 128  # `graphllm run` and the Python API
CHAT_MAX_TOKENS = 512  # one reply of `graphllm chat`
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SERVER_MAX_TOKENS = 512  # /v1/chat/completions without max_tokens (serve's --default-max-tokens)
RANDOM_SEED = -1  # seed -1 means a random seed (llama.cpp's convention), as does None
MAX_TOP_LOGPROBS = 20  # alternatives per token at most (OpenAI's limit)

# sampling for a conversation (chat, the server and the web page) when the model's generation_config sets none
CHAT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True  # leave special tokens (<|endoftext|>, ...) out of the text
    grammar: GrammarSpec | None = None  # constrain the output to this grammar (grammar.py)
    logprobs: int | None = None  # None: off; N: each token's logprob and its N likeliest alternatives

    def validate(self) -> "SamplingParams":
        """Raise GenerationError naming the first bad field and its value."""
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature", "must be >= 0"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
             "must be > 0 (1 = off)"),
            (self.seed is None or self.seed >= RANDOM_SEED, "seed", "must be >= 0 (or -1 for a random seed)"),
            (self.max_tokens is None or self.max_tokens >= 0, "max_tokens", "must be >= 0"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must hold non-empty strings"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS, "logprobs",
             f"must be in [0, {MAX_TOP_LOGPROBS}] alternatives"),
        ]
        for ok, name, requirement in checks:
            if not ok:
                raise GenerationError(f"{name} {requirement}, got {getattr(self, name)!r}")
        return self


def chat_sampling(generation_config: Mapping[str, Any]) -> dict[str, float]:
    """CHAT_SAMPLING with the values a model's generation_config (generation_config.json) sets over it."""
    given = {name: generation_config.get(name) for name in CHAT_SAMPLING}
    return {name: default if given[name] is None else type(default)(given[name])
            for name, default in CHAT_SAMPLING.items()}


class Sampler:
    """Picks the next token from one sequence's logits; owns its random generator and, if the sequence has
    one, its grammar's matcher. When params.logprobs is set, ``logprobs`` holds the last pick's
    log-probability and its likeliest alternatives (token_logprobs)."""

    def __init__(self, params: SamplingParams, grammar: GrammarMatcher | None = None) -> None:
        self.params = params.validate()
        self.grammar = grammar
        self.logprobs: tuple[float, list[tuple[int, float]]] | None = None

    @functools.cached_property
    def rng(self) -> np.random.Generator:
        """The sequence's random generator, made at its first draw: a greedy sequence draws none, and never loads
        numpy.random (6 MiB of a process's memory)."""
        return np.random.default_rng(None if self.params.seed == RANDOM_SEED else self.params.seed)

    def __call__(self, logits: np.ndarray, history: list[int] | None = None) -> int:
        """The next token id given the logits [vocab] and the ids so far (for the repetition penalty); with a
        grammar, only a token it allows, which advances it."""
        logits = self.penalize(logits, history)
        if self.grammar is not None:
            logits = self.grammar.mask(logits)
        token = self.pick(logits)
        if self.grammar is not None:
            self.grammar.consume(token)
        if self.params.logprobs is not None:
            self.logprobs = token_logprobs(logits, token, self.params.logprobs)
        return token

    def penalize(self, logits: np.ndarray, history: list[int] | None) -> np.ndarray:
        """The logits with the repetition penalty applied to the ids seen (the same array when it is off)."""
        p = self.params
        if p.repetition_penalty == 1.0 or not history:
            return logits
        logits = logits.copy()
        seen = np.unique(np.asarray(history, dtype=np.int64))
        vals = logits[seen]
        logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        return logits

    def pick(self, logits: np.ndarray) -> int:
        """A token id from (penalized, masked) logits: greedy, or temperature, top-k and top-p sampling. Only the
        candidates top-k/top-p can keep are sorted, never the whole vocabulary (a full sort costs ~8 ms a token)."""
        p = self.params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / p.temperature
        if p.top_k and p.top_k < scaled.size:
            idx = np.argpartition(-scaled, p.top_k - 1)[:p.top_k]
            weights = np.exp(scaled[idx] - scaled[idx].max())
            total = weights.sum()
        else:
            weights = np.exp(scaled - scaled.max())
            total = weights.sum()
            if p.top_p == 1.0:  # the whole distribution: no order needed
                return _draw(self.rng, weights)
            idx = _nucleus_candidates(scaled, weights, p.top_p * total)
            weights = weights[idx]
        order = np.argsort(-scaled[idx], kind="stable")
        idx, probs = idx[order], weights[order] / total
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            idx, probs = idx[:keep], probs[:keep]
        return int(idx[_draw(self.rng, probs)])


def _draw(rng: np.random.Generator, weights: np.ndarray) -> int:
    """An index drawn with probability proportional to ``weights`` (what ``rng.choice(n, p=...)`` does, without
    its checks and normalisation: a quarter of the cost over a whole vocabulary)."""
    cdf = np.cumsum(weights)
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.size - 1)


def _nucleus_candidates(scaled: np.ndarray, weights: np.ndarray, mass: float) -> np.ndarray:
    """The ids of the 64 or 1024 largest logits when their weights reach ``mass`` (top-p's nucleus then lies among
    them: a partition instead of a sort of the vocabulary), else every id."""
    for k in (64, 1024):
        if k < scaled.size:
            idx = np.argpartition(-scaled, k - 1)[:k]
            if weights[idx].sum() >= mass:
                return idx
    return np.arange(scaled.size)


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log-softmax of ``logits`` at ``token`` and the ``top`` likeliest ids with theirs (ids a grammar
    masked out, at -inf, are left out)."""
    x = logits.astype(np.float64)
    peak = x.max()
    logz = peak + np.log(np.exp(x - peak).sum())
    best: list[tuple[int, float]] = []
    if top:
        idx = np.argpartition(-x, top - 1)[:top] if top < x.size else np.arange(x.size)
        idx = idx[np.argsort(-x[idx], kind="stable")]
        best = [(int(i), float(x[i] - logz)) for i in idx if np.isfinite(x[i])]
    return float(x[token] - logz), best
