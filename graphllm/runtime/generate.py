"""One sequence's generation state: sampling, end-of-text, stop strings, token limits, streamed text.

The engine (engine.py) is the only generation loop; this module knows nothing of steps or slots.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationError
from .grammar import grammar_matcher
from .sampling import Sampler, SamplingParams


@dataclass(slots=True)
class Chunk:
    """One streamed piece: the sampled token (None on the final chunk) and the text it completed; when
    logprobs were asked for, the token's log-probability and its likeliest alternatives (id, logprob)."""

    token: int | None
    text: str
    finish_reason: str | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string was reached (the text before it is emitted)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        hits = [buf.find(s) for s in self.stops if s in buf]
        if hits:
            self.pending = ""
            return buf[:min(hits)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        """Whatever was held back, once generation ends without a stop string."""
        text, self.pending = self.pending, ""
        return text


def check_prompt(n_prompt: int, max_context: int) -> None:
    """A prompt must be non-empty and leave room for at least one new token."""
    if n_prompt == 0:
        raise GenerationError("the prompt is empty")
    if n_prompt >= max_context:
        raise GenerationError(f"the prompt has {n_prompt} tokens but the context holds {max_context} "
                              f"(including at least one new token); shorten it or raise --max-context")


class TokenStream:
    """Turns sampled tokens into chunks on ``out`` and decides when the sequence ends (sets finish_reason)."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], params: SamplingParams, max_context: int) -> None:
        self.params = params.validate()
        # a grammar decides where the output ends: it allows end-of-text only where the output is complete
        self.grammar = None if params.grammar is None else grammar_matcher(tokenizer, params.grammar)
        self.sampler = Sampler(params, self.grammar)
        self.prompt_tokens = len(prompt_ids)
        self.history = list(prompt_ids)  # prompt + generated ids
        # the history length at which the sequence ends: max_tokens new tokens or a full context
        self.limit = max_context if params.max_tokens is None else min(max_context, len(prompt_ids) + params.max_tokens)
        ignore_eos = params.ignore_eos and self.grammar is None
        self.eos = frozenset() if ignore_eos else frozenset(tokenizer.eos_token_ids)
        self.decoder = tokenizer.stream_decoder(prompt_ids, skip_special_tokens=params.skip_special_tokens)
        self.stops = StopMatcher(params.stop)
        self.finish_reason: str | None = None
        self.out: deque[Any] = deque()  # chunks to read, then the engine's error and/or end marker

    @property
    def completion_tokens(self) -> int:
        """Generated tokens so far (an end-of-text token is not counted)."""
        return len(self.history) - self.prompt_tokens

    def accept(self, logits: Any) -> None:
        """Sample the next token from these logits (penalized, then masked by the grammar if any) and queue
        the chunk(s) it yields; the last one ends the sequence."""
        token = self.sampler(logits, self.history)
        if token in self.eos:
            self.out.append(self.final("stop", flush=True))
            return
        self.history.append(token)
        text, stopped = self.stops.feed(self.decoder.feed(token))
        chunk = Chunk(token, text)
        if self.params.logprobs is not None:
            chunk.logprob, chunk.top_logprobs = self.sampler.logprobs
        self.out.append(chunk)
        if stopped:
            self.out.append(self.final("stop", flush=False))
        elif self.grammar is not None and self.grammar.done:
            self.out.append(self.final("stop", flush=True))
        elif len(self.history) >= self.limit:
            self.out.append(self.final("length", flush=True))

    def final(self, reason: str, flush: bool = True) -> Chunk:
        """The last chunk: held-back text (unless a stop string ended it) and the finish reason."""
        self.finish_reason = reason
        tail = ""
        if flush:
            tail, stopped = self.stops.feed(self.decoder.flush())
            tail += "" if stopped else self.stops.flush()
        return Chunk(None, tail, reason)
