"""Log-probabilities of generated tokens in OpenAI's shapes: chat (``content`` entries) and completions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..runtime.generate import Chunk
from ..runtime.grammar import token_bytes


def _token(tokenizer: Any, token: int) -> tuple[str, list[int]]:
    """A token's text (bytes that are part of a character written as \\xNN, so distinct tokens read
    differently) and its exact bytes."""
    raw = token_bytes(tokenizer, token)
    return raw.decode("utf-8", errors="backslashreplace"), list(raw)


def chat_logprobs(tokenizer: Any, chunks: Sequence[Chunk]) -> dict[str, Any]:
    """choices[i].logprobs of a chat completion (or of one stream event) for these chunks' tokens."""
    content = []
    for c in chunks:
        if c.token is None or c.logprob is None:
            continue
        text, raw = _token(tokenizer, c.token)
        alternatives = []
        for token, logprob in c.top_logprobs or ():
            alt_text, alt_raw = _token(tokenizer, token)
            alternatives.append({"token": alt_text, "logprob": logprob, "bytes": alt_raw})
        content.append({"token": text, "logprob": c.logprob, "bytes": raw, "top_logprobs": alternatives})
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer: Any, chunks: Sequence[Chunk], offset: int = 0) -> dict[str, Any]:
    """choices[i].logprobs of a text completion (or of one stream event whose text starts at ``offset``):
    tokens, token_logprobs, top_logprobs and each token's character offset in the tokens' joined text."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        if c.token is None or c.logprob is None:
            continue
        text = _token(tokenizer, c.token)[0]
        out["tokens"].append(text)
        out["token_logprobs"].append(c.logprob)
        out["top_logprobs"].append({_token(tokenizer, t)[0]: lp for t, lp in c.top_logprobs or ()})
        out["text_offset"].append(offset)
        offset += len(text)
    return out
