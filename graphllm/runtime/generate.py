"""The generation loop: prefill, then one decode step per token, streaming text as it completes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

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


def stream(llm: "LLM", prompt_ids: list[int], params: SamplingParams, slot: int = 0) -> Iterator[Chunk]:
    """Generate from a token prompt; the last chunk has token None and the finish reason."""
    sampler = Sampler(params)
    check_prompt(len(prompt_ids), llm.max_context)
    eos = set() if params.ignore_eos else set(llm.tokenizer.eos_token_ids)
    decoder = llm.tokenizer.stream_decoder(prompt_ids)
    stops = StopMatcher(params.stop)
    history = list(prompt_ids)
    logits = llm.prefill(prompt_ids, slot)
    cached = len(prompt_ids)
    finish = "length"
    stopped = False
    generated = 0
    while generated < params.max_tokens:
        token = sampler(logits, history)
        if token in eos:
            finish = "stop"
            break
        history.append(token)
        generated += 1
        text, stopped = stops.feed(decoder.feed(token))
        if stopped:
            yield Chunk(token, text)
            finish = "stop"
            break
        yield Chunk(token, text)
        if len(history) >= llm.max_context or generated >= params.max_tokens:
            break
        logits = llm.decode(token, cached, slot)
        cached += 1
    llm.note_cached(slot, history[:cached])
    tail = ""
    if not stopped:
        tail, stopped = stops.feed(decoder.flush())
        tail += "" if stopped else stops.flush()
    yield Chunk(None, tail, finish)
