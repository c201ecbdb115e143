"""Structured output, grammars and logprobs through the official `openai` client against a real server process.

The tiny fixture has random weights: only the grammar makes it write JSON, so every parse below is the
constraint's doing. Logprobs are checked against log-softmax of logits computed independently by the
reference executor.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import numpy as np
import openai
import pytest
from test_server import TINY, client, running_server

from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]}},
        "required": ["name", "age", "role"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "owner": {"type": "object", "properties": {
            "active": {"type": "boolean"},
            "level": {"enum": [1, 2, 3]}},
            "required": ["active", "level"], "additionalProperties": False}},
        "required": ["id", "owner"], "additionalProperties": False},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
        "scores": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
        "required": ["tags", "scores"], "additionalProperties": False},
}
SEEDS = range(6)
MESSAGES = [{"role": "user", "content": "Describe it as JSON."}]
GREEDY_8 = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def api(tmp_path_factory, exact_kv) -> openai.OpenAI:
    """The server, with a float32 KV cache: its logprobs are held to the reference's at 1e-4."""
    with running_server(tmp_path_factory.mktemp("structured") / "server.log", "--max-batch", "8", "--kv-dtype",
                        exact_kv) as base:
        yield client(base)


@pytest.fixture(scope="module")
def solo(exact_kv) -> LLM:
    return LLM.load(TINY, executor="reference", kv_dtype=exact_kv)


def _schema_format(name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def _chat(api: openai.OpenAI, seed: int, max_tokens: int = 80, **kw: Any) -> Any:
    return api.chat.completions.create(model="tiny_llama", messages=MESSAGES, temperature=1.0, seed=seed,
                                       max_tokens=max_tokens, **kw).choices[0]


def test_json_schema_outputs_validate_in_batched_steps(api):
    """Every schema over several seeds, all in flight at once (constrained sequences share steps with an
    unconstrained one): each output that stops validates, and (almost) all stop."""
    jobs = [(name, seed) for name in SCHEMAS for seed in SEEDS]
    with ThreadPoolExecutor(8) as pool:
        free = pool.submit(_chat, api, 0)
        done = list(pool.map(lambda job: _chat(api, job[1], response_format=_schema_format(job[0])), jobs))
    stopped = 0
    for (name, _), choice in zip(jobs, done):
        if choice.finish_reason == "stop":
            stopped += 1
            jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])
    assert stopped >= len(jobs) - 1
    assert free.result().finish_reason in ("stop", "length")


def test_json_schema_on_completions_and_streaming(api):
    fmt = _schema_format("person")
    r = api.completions.create(model="tiny_llama", prompt="JSON:", temperature=1.0, seed=3, max_tokens=80,
                               extra_body={"response_format": fmt})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMAS["person"])
    stream = api.chat.completions.create(model="tiny_llama", messages=MESSAGES, temperature=1.0, seed=4,
                                         max_tokens=80, response_format=fmt, stream=True)
    parts = [(c.choices[0].delta.content or "", c.choices[0].finish_reason) for c in stream if c.choices]
    assert parts[-1][1] == "stop"
    jsonschema.validate(json.loads("".join(p for p, _ in parts)), SCHEMAS["person"])


def test_json_object_parses(api):
    outputs = [_chat(api, seed, response_format={"type": "json_object"}, max_tokens=60) for seed in range(3)]
    stopped = [o for o in outputs if o.finish_reason == "stop"]
    assert stopped
    assert all(isinstance(json.loads(o.message.content), dict) for o in stopped)


def test_lark_and_regex_grammars(api):
    lark = 'start: answer " " NUMBER\nanswer: "yes" | "no"\nNUMBER: /[0-9]{1,3}/'
    for seed in range(3):
        text = _chat(api, seed, extra_body={"grammar": {"type": "lark", "value": lark}}).message.content
        assert re.fullmatch(r"(yes|no) [0-9]{1,3}", text), text
        gbnf = 'root ::= ("on" | "off") "=" [a-c]{2}'
        text = _chat(api, seed, extra_body={"grammar": {"type": "gbnf", "value": gbnf}}).message.content
        assert re.fullmatch(r"(on|off)=[a-c]{2}", text), text
        text = _chat(api, seed, extra_body={"grammar": gbnf}).message.content  # llama.cpp's form: the text alone
        assert re.fullmatch(r"(on|off)=[a-c]{2}", text), text
        r = api.completions.create(model="tiny_llama", prompt="code:", temperature=1.0, seed=seed, max_tokens=20,
                                   extra_body={"grammar": {"type": "regex", "value": "[A-F]{2}-[0-9]{3}"}})
        assert r.choices[0].finish_reason == "stop" and re.fullmatch(r"[A-F]{2}-[0-9]{3}", r.choices[0].text)


def _reference_logprobs(llm: LLM, ids: list[int], tokens: list[int]) -> list[np.ndarray]:
    """log-softmax of the reference executor's logits before each of ``tokens`` (fed back one by one)."""
    rows = [llm.prefill(ids)]
    for i, token in enumerate(tokens[:-1]):
        rows.append(llm.decode(token, len(ids) + i))
    out = []
    for row in rows:
        x = row.astype(np.float64)
        out.append(x - x.max() - np.log(np.exp(x - x.max()).sum()))
    return out


def test_chat_logprobs_equal_the_reference_log_softmax(api, solo):
    r = api.chat.completions.create(model="tiny_llama", messages=MESSAGES, temperature=0, max_tokens=8,
                                    logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 8
    ids = solo.tokenizer.encode(solo.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True))
    tokens = solo.complete(ids, GREEDY_8).token_ids
    expected = _reference_logprobs(solo, ids, tokens)
    for entry, token, lp in zip(content, tokens, expected):
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == solo.tokenizer.decode([token])
        assert entry.logprob == pytest.approx(lp[token], abs=1e-4)
        top = np.argsort(-lp, kind="stable")[:3]
        assert [alt.logprob for alt in entry.top_logprobs] == pytest.approx(lp[top], abs=1e-4)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the best one


def test_completion_logprobs_streamed_and_whole(api, solo):
    prompt = "Once upon a time"
    ids = solo.tokenizer.encode(prompt)
    tokens = solo.complete(ids, SamplingParams(max_tokens=6, ignore_eos=True)).token_ids
    expected = _reference_logprobs(solo, ids, tokens)
    kw = dict(model="tiny_llama", prompt=prompt, temperature=0, max_tokens=6, logprobs=2,
              extra_body={"ignore_eos": True})
    whole = api.completions.create(**kw).choices[0].logprobs
    streamed: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for event in api.completions.create(stream=True, **kw):
        if event.choices and event.choices[0].logprobs:
            for key in streamed:
                streamed[key] += getattr(event.choices[0].logprobs, key)
    for got in (whole, streamed):
        got = got if isinstance(got, dict) else got.model_dump()
        assert got["token_logprobs"] == pytest.approx([lp[t] for t, lp in zip(tokens, expected)], abs=1e-4)
        assert [len(alts) for alts in got["top_logprobs"]] == [2] * 6
        assert got["text_offset"] == list(np.cumsum([0] + [len(t) for t in got["tokens"][:-1]]))


def test_chat_logprobs_stream(api):
    kw = dict(model="tiny_llama", messages=MESSAGES, temperature=0, max_tokens=5, logprobs=True, top_logprobs=1,
              extra_body={"ignore_eos": True})
    whole = api.chat.completions.create(**kw).choices[0].logprobs.content
    streamed = [e for c in api.chat.completions.create(stream=True, **kw)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in whole] and len(whole) == 5
    # the second request reuses the first one's cached prompt prefix: the same logits to rounding
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-4)


@pytest.mark.parametrize("fields, name", [
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"audio": {"voice": "x"}}, "audio"),
    ({"made_up_field": 1}, "made_up_field"),
])
def test_unsupported_fields_get_a_400_naming_them(api, fields, name):
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="tiny_llama", messages=MESSAGES, max_tokens=1, extra_body=fields)
    assert name in err.value.message and err.value.body["param"] == name


def test_neutral_and_information_fields_are_accepted(api):
    r = api.chat.completions.create(model="tiny_llama", messages=MESSAGES, max_tokens=2, user="u1",
                                    presence_penalty=0, frequency_penalty=0.0, logit_bias={}, n=1,
                                    response_format={"type": "text"}, store=False, metadata={"k": "v"})
    assert r.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError, match="echo"):
        api.completions.create(model="tiny_llama", prompt="x", max_tokens=1, echo=True)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.audio"):
        api.chat.completions.create(model="tiny_llama", max_tokens=1,
                                    messages=[{"role": "user", "content": "x", "audio": {"id": "a"}}])


@pytest.mark.parametrize("kw, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "json_schema grammar is invalid"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"extra_body": {"grammar": {"type": "lark", "value": "start: ("}}}, "lark grammar is invalid"),
    ({"extra_body": {"grammar": {"type": "regex", "value": "a(b"}}}, "regex grammar is invalid"),
    ({"extra_body": {"grammar": {"type": "xml", "value": "x"}}}, "grammar.type"),
    ({"extra_body": {"grammar": {"type": "gbnf", "value": "root ::= ("}}}, "read as GBNF"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "logprobs must be in"),
])
def test_bad_grammars_and_logprobs_get_a_400(api, kw, words):
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="tiny_llama", messages=MESSAGES, max_tokens=4, **kw)
    assert words in err.value.message and "\n" not in err.value.message
