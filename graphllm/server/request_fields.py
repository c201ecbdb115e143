"""Which OpenAI request fields the server honours: the grammar a body asks for, and the fields it refuses.

A field this server does not implement is refused with its name rather than silently ignored, unless it
is null, carries information only (``user``), or holds the value that asks for nothing (``presence_penalty: 0``).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import GenerationError
from ..runtime.grammar import GrammarSpec

INFORMATION_FIELDS = ("user", "metadata", "safety_identifier", "prompt_cache_key")  # accepted, not used
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {  # not implemented: accepted only at the values that ask for nothing
    "frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},), "store": (False,),
    "service_tier": ("auto", "default"), "modalities": (["text"],), "best_of": (1,), "echo": (False,),
    "suffix": ("",),
}
GRAMMAR_TYPES = ("lark", "regex")  # the `grammar` extension field's types


def unsupported_field(fields: dict[str, Any] | None) -> tuple[str, str] | None:
    """The first field (name, message) among these unknown ones that asks for something not implemented."""
    for name, value in (fields or {}).items():
        if value is None or name in INFORMATION_FIELDS:
            continue
        neutral = NEUTRAL_VALUES.get(name)
        if neutral is None:
            return name, f"{name} is not supported by this server"
        if not any(type(value) is type(v) and value == v for v in neutral) and not _same_number(value, neutral):
            allowed = " or ".join(json.dumps(v) for v in neutral)
            return name, f"{name} is not supported by this server (only {allowed}, which asks for nothing)"
    return None


def _same_number(value: Any, neutral: tuple[Any, ...]) -> bool:
    """0.0 is 0: a number equal to a neutral number (booleans are not numbers here)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and any(isinstance(v, int) and not isinstance(v, bool) and value == v for v in neutral))


def request_grammar(response_format: dict[str, Any] | None, grammar: dict[str, Any] | None) -> GrammarSpec | None:
    """The grammar asked for by ``response_format`` (OpenAI's) or ``grammar`` (this server's extension:
    {"type": "lark" | "regex", "value": TEXT}); GenerationError naming the field when malformed."""
    if grammar is not None:
        if response_format is not None and response_format.get("type") != "text":
            raise GenerationError("give either response_format or grammar, not both")
        kind, value = grammar.get("type"), grammar.get("value")
        if kind not in GRAMMAR_TYPES:
            raise GenerationError(f"grammar.type must be one of {', '.join(GRAMMAR_TYPES)}, got {kind!r}")
        if not isinstance(value, str) or not value.strip():
            raise GenerationError("grammar.value must be a non-empty string (the Lark grammar or the regex)")
        return GrammarSpec(kind, value)
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise GenerationError("response_format.json_schema.schema must be a JSON schema (an object)")
        return GrammarSpec("json_schema", json.dumps(schema))
    raise GenerationError(f"response_format.type must be text, json_object or json_schema, got {kind!r}")
