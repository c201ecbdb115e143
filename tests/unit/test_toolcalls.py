"""Tool calls: formats found from chat templates, generated text parsed into calls (whole and streamed alike),
request checks, call grammars, and tools rendered through a chat template as transformers renders them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import llguidance
import numpy as np
import pytest

from graphllm.errors import ConfigError
from graphllm.io.tokenizer import Tokenizer
from graphllm.runtime.grammar import grammar_matcher
from graphllm.runtime.toolcalls import (
    FORMATS,
    ToolCallParser,
    ToolRequestError,
    check_tool_choice,
    check_tools,
    detect_format,
    template_tool_calls,
    tool_use,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOOLS_FIXTURE = FIXTURES / "tiny_qwen2_tools"
HERMES, MISTRAL, LLAMA3 = (next(f for f in FORMATS if f.name == n) for n in ("hermes", "mistral", "llama3_json"))
NAMES = frozenset({"get_weather", "add"})


def tool(name: str, parameters: dict | None = None) -> dict:
    return {"type": "function", "function": {"name": name, **({} if parameters is None else
                                                               {"parameters": parameters})}}


def parse(fmt, text: str, step: int = 0) -> tuple[str, list[tuple[str, dict]]]:
    """Content and (name, arguments) of ``text`` fed whole (step 0) or in pieces of ``step`` characters."""
    parser = ToolCallParser(fmt, NAMES)
    pieces = [text] if step == 0 else [text[i:i + step] for i in range(0, len(text), step)]
    content, calls = [], []
    for piece in pieces:
        text_out, new = parser.feed(piece)
        content.append(text_out)
        calls += new
    text_out, new = parser.finish()
    assert parser.calls == calls + new
    return "".join(content) + text_out, [(c.name, json.loads(c.arguments)) for c in calls + new]


WEATHER = {"city": "Paris;x"}
CASES = [
    (HERMES, 'Let me see.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris;x"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>',
     "Let me see.", [("get_weather", WEATHER), ("add", {"a": 1})]),
    (HERMES, "Just text, < and <tool ends here ", "Just text, < and <tool ends here ", []),
    (HERMES, "<tool_call>\n{bad json}\n</tool_call> after", "<tool_call>\n{bad json}\n</tool_call> after", []),
    (HERMES, '<tool_call>{"name": "rm", "arguments": {}}</tool_call>', '<tool_call>{"name": "rm", "arguments": {}}'
                                                                       '</tool_call>', []),
    (HERMES, '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 2}"}', "", [("add", {"a": 2})]),  # unclosed, args
    (LLAMA3, '{"name": "add", "parameters": {"a": 1}}; {"name": "get_weather", "parameters": {"city": "Paris;x"}}',
     "", [("add", {"a": 1}), ("get_weather", WEATHER)]),
    (LLAMA3, '<|python_tag|>{"name": "add", "parameters": {"a": 1}}', "", [("add", {"a": 1})]),
    (LLAMA3, "{ not a call", "{ not a call", []),
    (LLAMA3, 'Answer: {"name": "add"}', 'Answer: {"name": "add"}', []),  # JSON only counts at the start
    (MISTRAL, '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2}}, {"name": "add", "arguments": {}}]', "",
     [("add", {"a": 2}), ("add", {})]),
    (MISTRAL, ' [{"name": "add", "arguments": {"a": 2}}]', "", [("add", {"a": 2})]),  # marker skipped as special
    (MISTRAL, "[1] a footnote", "[1] a footnote", []),
]


@pytest.mark.parametrize("fmt, text, content, calls", CASES)
def test_parsed_whole_and_streamed_in_any_pieces_alike(fmt, text, content, calls):
    assert parse(fmt, text) == (content, calls)
    for step in (1, 2, 3, 5, 11):
        assert parse(fmt, text, step) == (content, calls), step


def test_streamed_content_is_given_at_once_except_a_possible_marker():
    parser = ToolCallParser(HERMES, NAMES)
    assert parser.feed("Hello wor") == ("Hello wor", [])
    assert parser.feed("ld \n<tool") == ("ld", [])  # whitespace and a marker's beginning are held
    assert parser.feed('_call>{"name": "add", "arguments": {"b": 1}}') == ("", [])
    content, calls = parser.feed("</tool_call>")
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("add", '{"b": 1}')]
    assert calls[0].id.startswith("call_") and calls[0].openai()["function"] == {"name": "add", "arguments": '{"b": 1}'}
    assert parser.finish() == ("", [])
    mistral = ToolCallParser(MISTRAL, NAMES)
    assert mistral.feed('[{"name": "add", "arguments": {}}]') == ("", [])  # the region runs to the end
    assert [len(c.id) for c in mistral.finish()[1]] == [9]  # Mistral's templates take 9-character ids


def test_formats_are_found_from_the_template():
    template = json.loads((TOOLS_FIXTURE / "tokenizer_config.json").read_text())["chat_template"]
    assert detect_format(template) is HERMES
    assert detect_format("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}") is MISTRAL
    assert detect_format("{{ '<|python_tag|>' }}{% if tools %}{% endif %}") is LLAMA3
    llama32 = """{{ tools }}{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name
    and its value}.' }}{{ '<|eot_id|>' }}"""
    assert detect_format(llama32) is LLAMA3
    assert detect_format("{{ tools }}") is None


@pytest.mark.parametrize("tools, param, message", [
    ([], "tools", "non-empty list"),
    ({"type": "function"}, "tools", "non-empty list"),
    ([{"type": "code"}], "tools[0].type", "must be 'function'"),
    ([{"type": "function"}], "tools[0].function", "must be an object"),
    ([tool("a b")], "tools[0].function.name", "letters, digits"),
    ([tool("a"), tool("a")], "tools[1].function.name", "defined twice"),
    ([tool("a", {"type": "array"})], "tools[0].function.parameters", "type 'object'"),
    ([{"type": "function", "function": {"name": "a", "description": 3}}], "tools[0].function.description", "string"),
])
def test_bad_tools_name_the_field(tools, param, message):
    with pytest.raises(ToolRequestError, match=message) as exc:
        check_tools(tools)
    assert exc.value.param == param


def test_tool_choice():
    tools = [tool("add"), tool("get_weather")]
    assert [check_tool_choice(c, tools) for c in (None, "none", "auto", "required")] == ["auto", "none", "auto",
                                                                                          "required"]
    assert check_tool_choice({"type": "function", "function": {"name": "add"}}, tools) == "add"
    assert check_tool_choice(None, None) == "none"
    for choice, tools_given, message in [("auto", None, "only allowed when tools"), ("any", tools, "must be 'none'"),
                                         ({"type": "function", "function": {"name": "sub"}}, tools, "'sub'")]:
        with pytest.raises(ToolRequestError, match=message) as exc:
            check_tool_choice(choice, tools_given)
        assert exc.value.param == "tool_choice"


def test_assistant_calls_reach_the_template_with_arguments_as_objects():
    calls = [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
    assert template_tool_calls(calls, "m")[0]["function"] == {"name": "add", "arguments": {"a": 1}}
    for bad, param in [("x", "m"), ([{"function": {"name": "add", "arguments": "[1]"}}], "m[0].function.arguments"),
                       ([{"id": "c"}], "m[0].function")]:
        with pytest.raises(ToolRequestError) as exc:
            template_tool_calls(bad, "m")
        assert exc.value.param == param


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("choice, parallel", [("required", True), ("required", False), ("add", True)])
def test_call_grammars_compile(fmt, choice, parallel):
    tools = [tool("add", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
             tool("get_weather")]
    spec = fmt.grammar(tools, choice, parallel)
    assert spec.kind == "lark" and "%json" in spec.source
    assert llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", spec.source)) == ""
    assert ('"get_weather"' in spec.source) == (choice == "required")


def test_tools_render_as_transformers_renders_them():
    expected = json.loads((TOOLS_FIXTURE / "expected.json").read_text())
    tok = Tokenizer.from_hf_folder(TOOLS_FIXTURE)
    assert tok.supports_tools
    messages = [{**m, "tool_calls": template_tool_calls(
        [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
         for c in m["tool_calls"]], "m")} if "tool_calls" in m else m for m in expected["messages"]]
    assert tok.apply_chat_template(messages, tools=expected["tools"]) == expected["text"]
    assert tool_use(expected["tools"], None, True, tok).fmt is HERMES


def test_a_template_without_tools_refuses_them():
    tok = Tokenizer.from_hf_folder(FIXTURES / "tiny_llama")
    assert not tok.supports_tools
    with pytest.raises(ConfigError, match="does not support tools"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=[tool("add")])
    with pytest.raises(ToolRequestError, match="does not support tools") as exc:
        tool_use([tool("add")], None, True, tok)
    assert exc.value.param == "tools"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("choice, parallel", [("required", True), ("add", False)])
def test_whatever_the_call_grammar_admits_parses_into_valid_calls(fmt, choice, parallel):
    """Random logits masked by the grammar (seeded, 8 runs per case) always spell calls the parser accepts, whose
    arguments validate against the tool's schema: grammar and parser agree on the format."""
    small = {"type": "integer", "minimum": 0, "maximum": 99}
    tools = [tool("add", {"type": "object", "properties": {"a": small, "b": small}, "required": ["a", "b"],
                          "additionalProperties": False}),
             tool("get_weather", {"type": "object", "required": ["city"], "additionalProperties": False,
                                  "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}})]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    tok = Tokenizer.from_hf_folder(TOOLS_FIXTURE)
    spec = fmt.grammar(tools, choice, parallel)
    rng = np.random.default_rng(0)
    for _ in range(8):
        matcher, ids = grammar_matcher(tok, spec), []
        while not matcher.done and len(ids) < 400:
            token = int(np.argmax(matcher.mask(rng.standard_normal(tok.vocab_size).astype(np.float32))))
            matcher.consume(token)
            ids.append(token)
        assert matcher.done
        content, calls = parse(fmt, tok.decode([i for i in ids if i not in tok.eos_token_ids]))
        assert content == "" and calls and (parallel or len(calls) == 1)
        for name, args in calls:
            assert name == choice or choice == "required"
            jsonschema.validate(args, schemas[name])


def test_a_named_tool_use_template_renders_conversations_with_tools(tmp_path):
    """As transformers: a model whose templates are named uses "tool_use" when tools are given, else "default"."""
    for name in ("tokenizer.json", "config.json"):
        (tmp_path / name).symlink_to(TOOLS_FIXTURE / name)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": "D{{ messages | length }}"},
        {"name": "tool_use", "template": "T{{ tools | length }}<tool_call>"}]}))
    tok = Tokenizer.from_hf_folder(tmp_path)
    user = [{"role": "user", "content": "hi"}]
    assert tok.supports_tools and tok.tools_template == "T{{ tools | length }}<tool_call>"
    assert tok.apply_chat_template(user) == "D1"
    assert tok.apply_chat_template(user, tools=[tool("add")]) == "T1<tool_call>"
    assert tool_use([tool("add")], None, True, tok).fmt is HERMES
    assert Tokenizer.from_hf_folder(TOOLS_FIXTURE).tool_template is None
