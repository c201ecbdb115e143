"""`graphllm eval`: perplexity of a text under a model and the KL divergence of its logits from float32.

Every position's logits come from one step per chunk: each token is packed as its own one-token
"sequence" in the same KV-cache slot, so SplitLastTokenStates keeps every row while attention stays
causal through the positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import GraphLLMError
from ..runtime.llm import LLM


@dataclass
class EvalResult:
    """What a dtype costs on a text."""

    tokens: int
    perplexity: float
    mean_kl: float | None
    reference_perplexity: float | None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def window_logits(llm: LLM, ids: list[int], chunk: int) -> Iterator[np.ndarray]:
    """Logits at every position of one window (a fresh context), chunk by chunk."""
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        yield llm.step(part, range(start, start + len(part)), [1] * len(part), [0] * len(part))


def evaluate(llm: LLM, text: str, reference: LLM | None = None, window: int = 256, chunk: int = 64,
             max_tokens: int | None = None) -> EvalResult:
    """Perplexity over non-overlapping windows; with a reference model, mean KL(reference || llm)."""
    ids = llm.tokenizer.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise GraphLLMError("the text is shorter than two tokens")
    window = min(window, llm.max_context)
    nll, ref_nll, kl, n = 0.0, 0.0, 0.0, 0
    for w in range(0, len(ids) - 1, window):
        win = ids[w:w + window + 1]
        inputs, targets = win[:-1], np.asarray(win[1:])
        rows = np.arange(len(targets))
        got = np.concatenate(list(window_logits(llm, inputs, chunk)))
        lp = _log_softmax(got)
        nll -= lp[rows, targets].sum()
        if reference is not None:
            ref = _log_softmax(np.concatenate(list(window_logits(reference, inputs, chunk))))
            ref_nll -= ref[rows, targets].sum()
            kl += (np.exp(ref) * (ref - lp)).sum()
        n += len(targets)
    return EvalResult(n, float(np.exp(nll / n)), kl / n if reference is not None else None,
                      float(np.exp(ref_nll / n)) if reference is not None else None)
