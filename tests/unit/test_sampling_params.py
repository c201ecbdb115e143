"""SamplingParams validation names the bad field and its value only; seed -1 means a random seed."""

from __future__ import annotations

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
