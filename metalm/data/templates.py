"""Prompt templates rendered without executing code: Jinja2's immutable sandbox.

A template sees the example's fields as variables (``{{ input }}``, ``{{ options }}`` ...).
Undefined variables are errors, and any attempt to reach Python internals
(``{{ input.__class__ }}``, calling unsafe methods) raises :class:`~metalm.errors.TaskError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import TaskError

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


@lru_cache(maxsize=4096)
def compile_template(text: str, field: str = "template", source: str | None = None) -> jinja2.Template:
    """Compile ``text`` once (cached); syntax errors become a :class:`TaskError` naming ``field``."""
    try:
        return _ENV.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise TaskError(field, f"template syntax error: {err.message} (line {err.lineno})", source) from None


def render(text: str, variables: Mapping[str, Any], field: str = "template", source: str | None = None) -> str:
    """Render a template with ``variables``.

    Raises:
        TaskError: On a syntax error, an undefined variable or an unsafe operation.
    """
    template = compile_template(text, field, source)
    try:
        return template.render(**variables)
    except SecurityError as err:
        raise TaskError(field, f"template tried an unsafe operation: {err}", source) from None
    except jinja2.UndefinedError as err:
        raise TaskError(field, f"template uses an undefined variable: {err.message} "
                               f"(available: {', '.join(sorted(variables))})", source) from None
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError, IndexError, KeyError) as err:
        raise TaskError(field, f"template failed to render: {type(err).__name__}: {err}", source) from None
