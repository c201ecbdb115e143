"""Chat templates: a model's jinja2 template compiled in a sandbox with transformers' helpers, and rendered.

Kept apart from the tokenizer so that jinja2 (5-6 MB resident) is imported only when a conversation is
rendered: `bench`, plain completions and `eval` never load it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from graphllm.errors import ConfigError, GenerationError


class _TemplateRaise(Exception):
    """Raised by a chat template's raise_exception()."""


def _raise_exception(message: str) -> None:
    """Template helper (as in transformers): reject the conversation with a message."""
    raise _TemplateRaise(message)


def _strftime_now(fmt: str) -> str:
    """Template helper (as in transformers): the current local time formatted."""
    return datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """Template filter (as in transformers): JSON without HTML escaping."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in a sandbox with transformers' helpers; syntax errors -> ConfigError."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"the model's chat template has a syntax error at line {exc.lineno}: {exc.message}") from exc


def reads_variable(template: jinja2.Template, source: str, name: str) -> bool:
    """Whether the template's source reads the variable ``name`` (e.g. ``tools``) without defining it."""
    return name in jinja2.meta.find_undeclared_variables(template.environment.parse(source))


def render(template: jinja2.Template, **context: Any) -> str:
    """The template rendered with ``context``; what the template rejects or fails on -> GenerationError."""
    try:
        return template.render(**context)
    except _TemplateRaise as exc:
        raise GenerationError(f"the chat template rejected the conversation: {exc}") from exc
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
        raise GenerationError(f"the chat template failed on these messages: {exc}") from exc
