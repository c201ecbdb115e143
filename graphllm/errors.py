"""User-facing errors: every failure a user can cause is one of these, printed without a traceback."""

from __future__ import annotations


class GraphLLMError(Exception):
    """Base of every error whose message is meant for the user (the CLI prints it and exits 2)."""


class ModelLoadError(GraphLLMError):
    """A model folder or file is missing, malformed or of an unsupported kind."""


class ConfigError(GraphLLMError):
    """A config.json (or GGUF metadata) lacks a key or holds a bad value."""


class GraphBuildError(GraphLLMError):
    """A ComputeGraph description is wrong; the message names the op, tensor and file:line."""


class GenerationError(GraphLLMError):
    """A generation request cannot be served (prompt longer than the context, bad sampling value)."""
