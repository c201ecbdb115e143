"""Constrained decoding: a grammar (JSON schema, any JSON, Lark, regex) as a per-token mask of allowed ids."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GenerationError

GRAMMAR_KINDS = ("json_schema", "json_object", "lark", "regex")


@dataclass(frozen=True)
class GrammarSpec:
    """What a sequence's output must match: ``kind`` and its ``source`` (the schema as JSON text, Lark text,
    or the regex; empty for json_object)."""

    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise GenerationError(f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, got {self.kind!r}")
        if self.kind != "json_object" and not self.source.strip():
            raise GenerationError(f"a {self.kind} grammar needs a non-empty source")
