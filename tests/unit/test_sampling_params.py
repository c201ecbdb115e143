"""SamplingParams validation names the bad field and its value only; seed -1 means a random seed; top-p and
whole-distribution draws keep exactly what the sorted definition keeps."""

from __future__ import annotations

import numpy as np
import pytest

from graphllm.errors import GenerationError
from graphllm.runtime.sampling import Sampler, SamplingParams


@pytest.mark.parametrize("field, value, message", [
    ("max_tokens", -5, "max_tokens must be >= 0, got -5"),
    ("temperature", float("nan"), "temperature must be >= 0, got nan"),
    ("top_p", 0.0, "top_p must be in (0, 1], got 0.0"),
    ("top_k", -1, "top_k must be >= 0 (0 = off), got -1"),
    ("repetition_penalty", 0.0, "repetition_penalty must be > 0 (1 = off), got 0.0"),
    ("seed", -2, "seed must be >= 0 (or -1 for a random seed), got -2"),
    ("stop", ["ok", ""], "stop must hold non-empty strings, got ['ok', '']"),
])
def test_errors_name_the_field_and_value_only(field, value, message):
    with pytest.raises(GenerationError) as exc:
        SamplingParams(**{field: value}).validate()
    assert str(exc.value) == message


def test_seed_minus_one_is_random():
    draws = {Sampler(SamplingParams(temperature=1.0, seed=-1)).rng.integers(1 << 62) for _ in range(3)}
    assert len(draws) == 3
    assert SamplingParams().skip_special_tokens


def _nucleus(logits: np.ndarray, temperature: float, top_p: float) -> set[int]:
    """top-p's kept ids the direct way: sort the whole distribution, keep the smallest prefix reaching top_p."""
    x = logits.astype(np.float64) / temperature
    order = np.argsort(-x, kind="stable")
    probs = np.exp(x[order] - x[order[0]])
    probs /= probs.sum()
    return set(order[:int(np.searchsorted(np.cumsum(probs), top_p) + 1)].tolist())


@pytest.mark.parametrize("spread", [0.5, 3.0, 8.0])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_top_p_keeps_exactly_the_nucleus(spread, top_p):
    """Whether the nucleus is found among a partition's candidates or the whole vocabulary, only its ids are drawn
    and each of them can be."""
    logits = (np.random.default_rng(3).standard_normal(5000) * spread).astype(np.float32)
    logits[:3] += 4 * spread
    nucleus = _nucleus(logits, 1.0, top_p)
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=top_p, seed=0))
    drawn = {sampler(logits) for _ in range(3000)}
    assert drawn <= nucleus
    if len(nucleus) <= 20:
        assert drawn == nucleus


def test_whole_distribution_draws_follow_the_softmax():
    """temperature 2, no top-k/top-p: draw frequencies match softmax(logits / 2) (chi-square, 6 ids)."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)
    probs = np.exp(logits / 2) / np.exp(logits / 2).sum()
    sampler = Sampler(SamplingParams(temperature=2.0, seed=7))
    n = 20000
    counts = np.bincount([sampler(logits) for _ in range(n)], minlength=6)
    chi2 = float((((counts - n * probs) ** 2) / (n * probs)).sum())
    assert chi2 < 20.5  # p = 0.001 at 5 degrees of freedom
