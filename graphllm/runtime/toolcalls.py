"""Tool calling: OpenAI `tools` checked, the model's call format found from its chat template, generated text
parsed (whole or streamed) into OpenAI `tool_calls`, and the grammar that only admits a valid call.

Formats: Hermes/Qwen2.5 (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, repeatable),
Llama 3.1/3.2 JSON (``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``, several
joined by ``;``) and Mistral (``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``). A call that does not
parse, or names no defined tool, stays plain text (as vLLM does).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationError
from .grammar import JSON_OPTIONS, GrammarSpec

TOOL_CHOICES = ("none", "auto", "required")
_ALNUM = string.ascii_letters + string.digits


class ToolRequestError(GenerationError):
    """A request's tools, tool_choice or tool messages are malformed; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the function's name and its arguments as a JSON object's text."""

    id: str
    name: str
    arguments: str

    def openai(self) -> dict[str, Any]:
        """As an entry of an OpenAI message's ``tool_calls``."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes calls: a region opens at one of ``opens`` (or at ``leading`` when the output starts
    with it) and ends at ``close`` (None: at the end of the output); ``parse`` turns a region into calls."""

    name: str
    opens: tuple[str, ...]
    close: str | None
    leading: str | None
    args_keys: tuple[str, ...]  # where a call's arguments are, first found wins
    joiner: str  # between two calls
    id_length: int  # Mistral's templates accept only 9-character ids

    def new_id(self) -> str:
        """A fresh call id in the form this model's template accepts."""
        if self.id_length:
            return "".join(secrets.choice(_ALNUM) for _ in range(self.id_length))
        return "call_" + secrets.token_hex(12)

    def parse(self, region: str, names: frozenset[str]) -> list[ToolCall] | None:
        """The calls in one region's text (markers excluded), or None if it is not a valid call of a defined tool."""
        values = _json_values(region)
        if values is None:
            return None
        objects = [o for v in values for o in (v if isinstance(v, list) else [v])]
        calls = []
        for obj in objects:
            if not isinstance(obj, dict) or obj.get("name") not in names:
                return None
            args = next((obj[k] for k in self.args_keys if k in obj), {})
            args = _loads(args) if isinstance(args, str) else args
            if not isinstance(args, dict):
                return None
            calls.append(ToolCall(self.new_id(), obj["name"], json.dumps(args, ensure_ascii=False)))
        return calls or None

    def grammar(self, tools: Sequence[dict[str, Any]], choice: str, parallel: bool) -> GrammarSpec:
        """A Lark grammar (llguidance's dialect, JSON schemas embedded with %json, compact as grammar.py's JSON)
        admitting only valid calls of the tools that ``choice`` allows ("required": any, else the named one), one
        or, if ``parallel``, more."""
        allowed = [t["function"] for t in tools if choice == "required" or t["function"]["name"] == choice]
        variants = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                      self.args_keys[0]: f.get("parameters") or {"type": "object"}},
                     "required": ["name", self.args_keys[0]], "additionalProperties": False} for f in allowed]
        call = variants[0] if len(variants) == 1 else {"anyOf": variants}
        many = parallel and choice == "required"
        if self.name == "mistral":  # the calls are one JSON list
            call, many = {"type": "array", "items": call, "minItems": 1, **({} if many else {"maxItems": 1})}, False
        parts = [f"%json {json.dumps({'x-guidance': JSON_OPTIONS, **call})}"]
        if self.close:
            parts = [json.dumps(self.opens[0] + "\n"), *parts, json.dumps("\n" + self.close)]
        body = "call: " + " ".join(parts)
        rule = f"call ({json.dumps(self.joiner)} call)*" if many else "call"
        return GrammarSpec("lark", f"start: {rule}\n{body}\n")


FORMATS = (
    ToolFormat("hermes", ("<tool_call>",), "</tool_call>", None, ("arguments", "parameters"), "\n", 0),
    ToolFormat("mistral", ("[TOOL_CALLS]",), None, "[", ("arguments", "parameters"), ", ", 9),
    ToolFormat("llama3_json", ("<|python_tag|>",), None, "{", ("parameters", "arguments"), "; ", 0),
)


def detect_format(chat_template: str) -> ToolFormat | None:
    """The call format a chat template teaches its model, from the markers it writes (None: not recognised)."""
    if "<tool_call>" in chat_template:
        return FORMATS[0]
    if "[TOOL_CALLS]" in chat_template:
        return FORMATS[1]
    if "<|python_tag|>" in chat_template or ('"parameters"' in chat_template and "<|eot_id|>" in chat_template):
        return FORMATS[2]
    return None


class ToolCallParser:
    """Splits generated text, fed piece by piece, into content and tool calls: content is passed on at once
    except a tail that may begin a call's marker; a call is given once its region is complete and valid,
    else its text is passed on as content. The whole text fed at once gives the non-streaming result."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        self.fmt, self.names = fmt, names
        self.pending = ""  # text not yet given out
        self.region: str | None = None  # the open call's marker + text, while inside one
        self.started = False  # some non-whitespace text has been seen
        self.after_call = False  # drop the whitespace that follows a call
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content to pass on now and calls completed by this piece of text."""
        self.pending += text
        content, calls = [], []
        while self.pending:
            if self.region is not None:
                if self.fmt.close is None or self.fmt.close not in self.pending:
                    break
                inner, _, self.pending = self.pending.partition(self.fmt.close)
                content.append(self._close(inner, True, calls))
                continue
            if self.after_call:
                self.pending = self.pending.lstrip()
                self.after_call = not self.pending
                continue
            start, marker = self._find_open()
            if start < 0:
                keep = self._held_tail()
                content.append(self.pending[:len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
                self.started = self.started or bool(content[-1].strip())
                break
            content.append(self.pending[:start].rstrip())
            self.region, self.pending = marker, self.pending[start + len(marker):]
            self.started = True
        return "".join(content), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end of generation: the remaining content and calls (an unfinished region parsed as it is)."""
        content, calls = self.feed("")
        if self.region is not None:
            region, self.pending = self.pending, ""
            content += self._close(region, False, calls)
        content, self.pending = content + self.pending, ""
        return content, calls

    def _find_open(self) -> tuple[int, str]:
        """Where the first call marker starts in the pending text (-1 if none) and the marker."""
        found = [(i, m) for m in self.fmt.opens if (i := self.pending.find(m)) >= 0]
        head = self.pending.lstrip()
        if not self.started and self.fmt.leading and head.startswith(self.fmt.leading) and \
                not any(m.startswith(head) for m in self.fmt.opens):  # not what may still become a marker
            found.append((len(self.pending) - len(head), ""))
        return min(found, default=(-1, ""), key=lambda f: (f[0], -len(f[1])))  # the longer marker at a tie

    def _held_tail(self) -> int:
        """How many trailing characters to hold: whitespace plus a prefix of a marker (all, before the output's
        first non-whitespace, which may still be the leading text)."""
        if not self.started and not self.pending.strip():
            return len(self.pending)
        text, best = self.pending, 0
        for marker in self.fmt.opens:
            for n in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:n]):
                    best = max(best, n)
                    break
        return len(text) - len(text[:len(text) - best].rstrip()) if best else len(text) - len(text.rstrip())

    def _close(self, body: str, closed: bool, calls: list[ToolCall]) -> str:
        """End the open region (``closed``: at its close marker): its calls are added to ``calls``, or, if they
        do not parse, its text is returned as content."""
        raw = self.region + body + (self.fmt.close if closed else "")
        self.region = None
        parsed = self.fmt.parse(body, self.names)
        self.after_call = parsed is not None
        if parsed is None:
            return raw
        self.calls.extend(parsed)
        calls.extend(parsed)
        return ""


# ---------------------------------------------------------------- requests
@dataclass(frozen=True)
class ToolUse:
    """What a chat request asks of tools: the checked definitions, the choice ("none", "auto", "required" or a
    tool's name), whether several calls may be made, and the call format of the model."""

    tools: list[dict[str, Any]]
    choice: str
    parallel: bool
    fmt: ToolFormat

    def grammar(self) -> GrammarSpec | None:
        """The grammar that forces a valid call ("required" or a named tool), else None."""
        return None if self.choice in ("none", "auto") else self.fmt.grammar(self.tools, self.choice, self.parallel)

    def parser(self) -> ToolCallParser | None:
        """A parser for one generation's text (None with "none": the model is not to call tools)."""
        names = frozenset(t["function"]["name"] for t in self.tools)
        return None if self.choice == "none" else ToolCallParser(self.fmt, names)


def tool_use(tools: Any, choice: Any, parallel: Any, tokenizer: Any) -> ToolUse | None:
    """The checked tool request (None without tools); a template that cannot render tools, or whose call format
    is not recognised, is refused."""
    if tools is None:
        check_tool_choice(choice, None)
        return None
    tools = check_tools(tools)
    if not isinstance(parallel, bool):
        raise ToolRequestError("parallel_tool_calls must be true or false", "parallel_tool_calls")
    if not tokenizer.supports_tools:
        raise ToolRequestError("this model's chat template does not support tools", "tools")
    fmt = detect_format(tokenizer.tools_template)
    if fmt is None:
        raise ToolRequestError(f"this model's chat template renders tools in a call format graphllm does not know "
                               f"(known: {', '.join(f.name for f in FORMATS)})", "tools")
    return ToolUse(tools, check_tool_choice(choice, tools), parallel, fmt)


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI's ``tools``: a list of {"type": "function", "function": {"name", "description"?, "parameters"?}}."""
    if not isinstance(tools, list) or not tools:
        raise ToolRequestError("tools must be a non-empty list of {'type': 'function', 'function': {...}}", "tools")
    names = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ToolRequestError(f"{where}.type must be 'function'", f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ToolRequestError(f"{where}.function must be an object with a name", f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ToolRequestError(f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-', got "
                                   f"{name!r}", f"{where}.function.name")
        if name in names:
            raise ToolRequestError(f"{where}.function.name {name!r} is defined twice", f"{where}.function.name")
        names.add(name)
        params = function.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise ToolRequestError(f"{where}.function.parameters must be a JSON schema of type 'object'",
                                   f"{where}.function.parameters")
        if not isinstance(function.get("description", ""), str):
            raise ToolRequestError(f"{where}.function.description must be a string", f"{where}.function.description")
    return tools


def check_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> str:
    """``tool_choice`` as "none", "auto", "required" or a defined tool's name (the default: "auto" with tools)."""
    if choice is None:
        return "auto" if tools else "none"
    if not tools:
        raise ToolRequestError("tool_choice is only allowed when tools are given", "tool_choice")
    if choice in TOOL_CHOICES:
        return choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" \
        else None
    if not isinstance(name, str):
        raise ToolRequestError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                               "{'name': ...}}", "tool_choice")
    if name not in {t["function"]["name"] for t in tools}:
        raise ToolRequestError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    return name


def template_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` as chat templates take them: arguments as an object, not JSON text."""
    if not isinstance(calls, list):
        raise ToolRequestError(f"{where} must be a list of tool calls", where)
    out = []
    for i, call in enumerate(calls):
        at = f"{where}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolRequestError(f"{at}.function must be an object with a name and arguments", f"{at}.function")
        args = function.get("arguments", "{}")
        args = _loads(args) if isinstance(args, str) else args
        if not isinstance(args, dict):
            raise ToolRequestError(f"{at}.function.arguments must be a JSON object (as text)",
                                   f"{at}.function.arguments")
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": function["name"], "arguments": args}})
    return out


def _json_values(text: str) -> list[Any] | None:
    """The JSON values in ``text``, separated by whitespace or ';' (None if anything else is there)."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while (i := len(text) - len(text[i:].lstrip().lstrip(";").lstrip())) < len(text):
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        values.append(value)
    return values


def _loads(text: str) -> Any:
    """Parsed JSON text, or None when it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
