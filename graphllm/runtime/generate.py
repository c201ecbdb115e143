"""The generation loop: prefill, then one decode step per token, streaming text as it completes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import GenerationError
from .sampling import Sampler, SamplingParams

if TYPE_CHECKING:
    from .llm import LLM


@dataclass
class Chunk:
    """One streamed piece: the sampled token (None on the final chunk) and the text it completed."""

    token: int | None
    text: str
    finish_reason: str | None = None


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string was reached (the text before it is emitted)."""
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
    """One sequence's generation state: sampling, end-of-text, stop strings, limits, streamed text.

    Shared by the single-sequence loop below and the batching engine, so both end a generation the
    same way.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], params: SamplingParams, max_context: int) -> None:
        self.params = params
        self.sampler = Sampler(params)
        self.prompt_tokens = len(prompt_ids)
        self.history = list(prompt_ids)  # prompt + generated ids
        self.max_context = max_context
        self.eos = set() if params.ignore_eos else set(tokenizer.eos_token_ids)
        self.decoder = tokenizer.stream_decoder(prompt_ids)
        self.stops = StopMatcher(params.stop)
        self.finish_reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        """Generated tokens so far (an end-of-text token is not counted)."""
        return len(self.history) - self.prompt_tokens

    def sample(self, logits: Any) -> int:
        """The next token for these logits, given everything so far (repetition penalty)."""
        return self.sampler(logits, self.history)

    def accept(self, token: int) -> list[Chunk]:
        """Take one sampled token: the chunks it yields (text, then a final chunk when this ends it)."""
        if token in self.eos:
            return [self.final("stop", flush=True)]
        self.history.append(token)
        text, stopped = self.stops.feed(self.decoder.feed(token))
        chunks = [Chunk(token, text)]
        if stopped:
            chunks.append(self.final("stop", flush=False))
        elif self.completion_tokens >= self.params.max_tokens or len(self.history) >= self.max_context:
            chunks.append(self.final("length", flush=True))
        return chunks

    def final(self, reason: str, flush: bool = True) -> Chunk:
        """The last chunk: held-back text (unless a stop string ended it) and the finish reason."""
        self.finish_reason = reason
        tail = ""
        if flush:
            tail, stopped = self.stops.feed(self.decoder.flush())
            tail += "" if stopped else self.stops.flush()
        return Chunk(None, tail, reason)


def stream(llm: "LLM", prompt_ids: list[int], params: SamplingParams, slot: int = 0) -> Iterator[Chunk]:
    """Generate from a token prompt; the last chunk has token None and the finish reason."""
    gen = TokenStream(llm.tokenizer, prompt_ids, params.validate(), llm.max_context)
    check_prompt(len(prompt_ids), llm.max_context)
    if params.max_tokens == 0:
        yield gen.final("length")
        return
    logits = llm.prefill(prompt_ids, slot)
    cached = len(prompt_ids)
    while True:
        chunks = gen.accept(gen.sample(logits))
        yield from chunks
        if gen.finish_reason is not None:
            break
        logits = llm.decode(gen.history[-1], cached, slot)
        cached += 1
    llm.note_cached(slot, gen.history[:cached])
