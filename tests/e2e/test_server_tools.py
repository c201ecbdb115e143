"""Tool calls through the official `openai` client against a real server on tiny_qwen2_tools (Qwen2.5's template):
a forced call (named or required: the random weights produce a valid call only because of the grammar) ->
its result as a `role: tool` message -> an answer; streamed calls equal whole ones; bad requests get 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest
from test_server import KEY, client, running_server  # tests/e2e is on sys.path (pytest's rootdir-relative import)

from graphllm.io.tokenizer import Tokenizer

MODEL = Path(__file__).parents[1] / "fixtures" / "tiny_qwen2_tools"
TOOLS = json.loads((MODEL / "expected.json").read_text())["tools"]
ADD = {"type": "function", "function": {"name": "add", "description": "Adds two small numbers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a", "b"], "additionalProperties": False}}}
USER = [{"role": "user", "content": "Weather in Paris?"}]
GREEDY = {"temperature": 0, "max_tokens": 120}


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[openai.OpenAI]:
    with running_server(tmp_path_factory.mktemp("tools") / "server.log", "--api-key", KEY, model=MODEL) as base:
        yield client(base)


def schema_of(name: str) -> dict:
    return next(t["function"]["parameters"] for t in (*TOOLS, ADD) if t["function"]["name"] == name)


def assert_valid_calls(message, names: set[str]) -> list[tuple[str, dict]]:
    """The message's calls as (name, arguments), each checked against its tool's schema."""
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    for call, (name, args) in zip(message.tool_calls, calls):
        assert call.type == "function" and call.id.startswith("call_") and name in names
        jsonschema.validate(args, schema_of(name))
    return calls


def test_named_call_round_trip(api):
    r = api.chat.completions.create(model=MODEL.name, messages=USER, tools=TOOLS, **GREEDY,
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [(name, args)] = assert_valid_calls(choice.message, {"get_weather"})
    result = {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": '{"temperature": 21}'}
    conversation = [*USER, choice.message.model_dump(exclude_none=True), result]
    answer = api.chat.completions.create(model=MODEL.name, messages=conversation, tools=TOOLS, tool_choice="none",
                                         temperature=0, max_tokens=5)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].finish_reason == "length"
    rendered = Tokenizer.from_hf_folder(MODEL).apply_chat_template(
        [*USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": result["tool_call_id"], "type": "function", "function": {"name": name, "arguments": args}}]},
         {**result, "name": name}], tools=TOOLS)
    assert f'"arguments": {json.dumps(args)}}}\n</tool_call>' in rendered and "<tool_response>" in rendered
    assert answer.usage.prompt_tokens == len(Tokenizer.from_hf_folder(MODEL).encode(rendered))


def test_required_calls_stream_as_they_come_whole(api):
    kwargs = dict(model=MODEL.name, messages=USER, tools=[*TOOLS, ADD], tool_choice="required",
                  parallel_tool_calls=False, **GREEDY)
    whole = api.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "tool_calls"
    calls = assert_valid_calls(whole.message, {"get_weather", "add"})
    assert len(calls) == 1
    chunks = list(api.chat.completions.create(**kwargs, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""
    streamed: dict[int, dict] = {}
    for d in deltas:
        for part in d.tool_calls or []:
            entry = streamed.setdefault(part.index, {"id": part.id, "name": part.function.name, "arguments": ""})
            entry["arguments"] += part.function.arguments or ""
    assert [(e["name"], json.loads(e["arguments"])) for e in streamed.values()] == calls
    assert streamed[0]["id"].startswith("call_")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_auto_and_none_leave_plain_text_as_content(api):
    for choice in ("auto", "none"):
        kwargs = dict(model=MODEL.name, messages=USER, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=12)
        whole = api.chat.completions.create(**kwargs).choices[0]
        assert whole.message.tool_calls is None and whole.finish_reason == "length"  # random weights call nothing
        streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(**kwargs, stream=True)
                           if c.choices)
        assert streamed == whole.message.content != ""


@pytest.mark.parametrize("kwargs, param, needle", [
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name", "letters"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "must be an object"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"tool_choice": "required"}, "tool_choice", "only allowed when tools"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "true or false"),
    ({"functions": [{"name": "f"}]}, "functions", "deprecated"),
    ({"messages": [*USER, {"role": "tool", "content": "1"}]}, "messages[1].tool_call_id", "id of the call"),
])
def test_bad_tool_requests_are_400_naming_the_field(api, kwargs, param, needle):
    body = {"model": MODEL.name, "messages": USER, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(**body)
    assert needle in exc.value.message and exc.value.body["param"] == param
