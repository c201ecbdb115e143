"""The grammar module (llguidance bridge, masks, compile cache) and constrained sampling with logprobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from graphllm.errors import GenerationError
from graphllm.io.tokenizer import Tokenizer
from graphllm.runtime import grammar
from graphllm.runtime.grammar import GrammarSpec, compile_grammar, grammar_matcher
from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams, token_logprobs

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_hf_folder(TINY)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM.load(TINY, executor="reference")


def test_spec_names_a_bad_kind_or_an_empty_source():
    with pytest.raises(GenerationError, match="grammar kind must be one of .* got 'gbnf'"):
        GrammarSpec("gbnf", "x")
    with pytest.raises(GenerationError, match="a regex grammar needs a non-empty source"):
        GrammarSpec("regex", " ")
    assert GrammarSpec("json_object").source == ""


def test_the_mask_allows_exactly_the_tokens_the_grammar_can_take(tok):
    matcher = grammar_matcher(tok, GrammarSpec("regex", "[0-9]+"))
    logits = np.random.default_rng(0).standard_normal(tok.vocab_size + 8).astype(np.float32)  # padded width
    masked = matcher.mask(logits)
    assert masked.dtype == logits.dtype and masked.shape == logits.shape
    digits = {i for i in range(tok.vocab_size) if re.fullmatch(r"[0-9]+", tok.decode([i]))}
    assert digits and set(np.flatnonzero(np.isfinite(masked))) == digits  # no end-of-text yet, no padding ids
    assert np.array_equal(masked[sorted(digits)], logits[sorted(digits)])
    matcher.consume(min(digits))
    after = np.flatnonzero(np.isfinite(matcher.mask(logits)))
    assert set(tok.eos_token_ids) <= set(after)  # complete now: end-of-text is allowed
    assert not matcher.done


def test_a_finished_grammar_is_done_and_a_bad_token_is_an_error(tok):
    matcher = grammar_matcher(tok, GrammarSpec("lark", 'start: "ok"'))
    for token in tok.encode("ok", add_special_tokens=False):
        matcher.mask(np.zeros(tok.vocab_size, np.float32))
        matcher.consume(token)
    assert matcher.done
    other = grammar_matcher(tok, GrammarSpec("lark", 'start: "ok"'))
    with pytest.raises(GenerationError, match="the grammar rejected token"):
        other.consume(tok.encode("x", add_special_tokens=False)[0])


def test_gbnf_is_read_as_lark(tok):
    matcher = grammar_matcher(tok, GrammarSpec("lark", 'root ::= "a" [0-9]'))
    allowed = np.flatnonzero(np.isfinite(matcher.mask(np.zeros(tok.vocab_size, np.float32))))
    assert {tok.decode([int(i)]) for i in allowed} <= {"a"} | {f"a{d}" for d in range(10)}


def test_compiled_grammars_are_cached_per_spec_in_a_bounded_lru(tok, monkeypatch):
    monkeypatch.setattr(grammar, "GRAMMAR_CACHE_SIZE", 2)
    bridge = grammar._bridge(tok)
    specs = [GrammarSpec("regex", f"a{{{n}}}") for n in range(1, 4)]
    first = bridge.compiled(specs[0])
    assert bridge.compiled(GrammarSpec("regex", "a{1}")) is first and grammar._bridge(tok) is bridge
    bridge.compiled(specs[1])
    bridge.compiled(specs[2])
    assert len(bridge._compiled) == 2 and specs[0] not in bridge._compiled
    one, two = grammar_matcher(tok, specs[1]), grammar_matcher(tok, specs[1])
    one.consume(tok.encode("a", add_special_tokens=False)[0])
    assert np.isfinite(two.mask(np.zeros(tok.vocab_size, np.float32))).sum() > 0  # sequences do not share state


@pytest.mark.parametrize("spec, words", [
    (GrammarSpec("json_schema", '{"type": "nonsense"}'), "json_schema grammar is invalid: Invalid type"),
    (GrammarSpec("json_schema", "[1]"), "json_schema grammar is invalid"),
    (GrammarSpec("lark", "start: ("), "lark grammar is invalid"),
    (GrammarSpec("lark", "start: foo"), 'unknown name: "foo"'),
    (GrammarSpec("regex", "a(b"), "unclosed group"),
    (GrammarSpec("lark", "root ::= foo"), "(read as GBNF): Rule 'foo' not found"),
])
def test_a_grammar_that_does_not_compile_is_a_one_line_error(tok, spec, words):
    with pytest.raises(GenerationError) as err:
        compile_grammar(tok, spec)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_token_logprobs_are_the_log_softmax_and_skip_masked_ids():
    logits = np.array([2.0, -np.inf, 0.5, 1.0, -np.inf], np.float32)
    expected = np.log(np.exp([2.0, 0.5, 1.0]) / np.exp([2.0, 0.5, 1.0]).sum())
    chosen, top = token_logprobs(logits, 3, 4)
    assert chosen == pytest.approx(expected[2])
    assert [i for i, _ in top] == [0, 3, 2] and [lp for _, lp in top] == pytest.approx(expected[[0, 2, 1]])
    assert token_logprobs(logits, 0, 0) == (pytest.approx(expected[0]), [])


def test_constrained_generation_ends_when_the_grammar_is_complete(llm):
    schema = {"type": "object", "properties": {"k": {"enum": ["x", "y"]}, "n": {"type": "boolean"}},
              "required": ["k", "n"], "additionalProperties": False}
    for seed in range(3):
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=40, ignore_eos=True,
                                grammar=GrammarSpec("json_schema", json.dumps(schema)))
        out = llm.complete("data:", params)
        assert out.finish_reason == "stop"
        value = json.loads(out.text)
        assert set(value) == {"k", "n"} and value["k"] in "xy" and isinstance(value["n"], bool)


def test_logprobs_with_a_grammar_are_over_the_allowed_tokens_only(llm):
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=3, logprobs=5,
                            grammar=GrammarSpec("lark", 'start: "yes" | "no"'))
    chunks = [c for c in llm.stream("answer:", params) if c.token is not None]
    first = chunks[0]
    allowed = {llm.tokenizer.decode([t]) for t, _ in first.top_logprobs}
    assert allowed <= {"y", "ye", "yes", "n", "no"} and first.token in dict(first.top_logprobs)
    assert sum(np.exp(lp) for _, lp in first.top_logprobs) <= 1 + 1e-9
    assert first.logprob == pytest.approx(dict(first.top_logprobs)[first.token])


def test_no_grammar_and_no_logprobs_leave_chunks_bare(llm):
    chunks = list(llm.stream("hi", SamplingParams(max_tokens=3, ignore_eos=True)))
    assert all(c.logprob is None and c.top_logprobs is None for c in chunks)


def test_a_grammar_admitting_nothing_is_one_short_sentence(tok):
    """A schema that compiles but admits no text ($ref to itself) fails at its first mask with llguidance's stop code
    in words, without the parser state and grammar dump llguidance appends."""
    matcher = grammar_matcher(tok, GrammarSpec("json_schema", '{"$ref": "#"}'))
    with pytest.raises(GenerationError) as err:
        matcher.mask(np.zeros(tok.vocab_size, np.float32))
    message = str(err.value)
    assert "no token can continue the output" in message and "<state>" not in message and len(message) < 200
