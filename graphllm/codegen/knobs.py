"""Kernel knobs: the tunable choices of a kernel template (tile sizes, crossovers, split policies).

Each kernel module declares its templates' knobs in one tuple; its lowering registers them
(`lower.lowering(..., knobs=...)`), reads the chosen values from the mapping it is called with, and
`lower.lower` validates a caller's values against them and records them on the Kernel. The defaults
are the measured choices (graphllm/codegen/NOTES.md): lowering with them gives today's kernels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graphllm.errors import GraphLLMError


class KnobError(GraphLLMError, ValueError):
    """A knob a kernel does not have, or a value outside the knob's allowed values."""


@dataclass(frozen=True)
class Knob:
    """One tunable choice of a kernel template: its allowed values, the default, and what it means."""

    name: str
    values: tuple[Any, ...]
    default: Any
    meaning: str

    def __post_init__(self) -> None:
        """A declaration whose default is not allowed is a programming error, caught at import."""
        if self.default not in self.values:
            raise ValueError(f"knob {self.name}: default {self.default!r} is not one of {self.values}")


def defaults(knobs: Iterable[Knob]) -> dict[str, Any]:
    """Return {name: default} of the knobs."""
    return {k.name: k.default for k in knobs}


def resolve(knobs: Sequence[Knob], given: Mapping[str, Any], kernel: str) -> dict[str, Any]:
    """Return every knob's value (`given` over the defaults); KnobError naming `kernel` for an unknown knob or value."""
    declared = {k.name: k for k in knobs}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise KnobError(f"{kernel} has no knob {', '.join(unknown)}; its knobs: {', '.join(declared) or 'none'}")
    for name, value in given.items():
        if value not in declared[name].values:
            allowed = ", ".join(map(repr, declared[name].values))
            raise KnobError(f"{kernel}: knob {name} = {value!r} is not one of {allowed}")
    return {**defaults(knobs), **given}
