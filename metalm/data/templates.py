"""Prompt templates rendered without executing code: Jinja2's immutable sandbox, bounded.

A template sees the example's fields as variables (``{{ input }}``, ``{{ options }}`` ...).
Undefined variables are errors, and any attempt to reach Python internals
(``{{ input.__class__ }}``, calling unsafe methods) raises :class:`~metalm.errors.TaskError`.

Rendering is bounded so a task file cannot hang or exhaust memory: at most :data:`MAX_ITEMS`
``range`` items in all per render (nested loops count), no call with an integer argument
above :data:`MAX_ITEMS` (``"x".ljust(10**9)``), no power with more than :data:`MAX_BITS` bits
and no repetition (``"x" * n``) longer than :data:`MAX_ITEMS`, at most :data:`MAX_OUTPUT`
characters of output, and recursion (a macro calling itself) ends in an error, not a crash.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import TaskError

MAX_ITEMS = 1_000_000
MAX_BITS = 100_000
MAX_OUTPUT = 1_000_000
_budget = threading.local()


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the size limits of the module doc."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (left, right))
        if operator == "**" and numbers and abs(left) > 1 and right * math.log2(abs(left)) > MAX_BITS:
            raise SecurityError(f"a power of more than {MAX_BITS} bits")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_ITEMS:
                    raise SecurityError(f"repetition of {len(seq)} items {n} times is too long")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if any(isinstance(a, int) and abs(a) > MAX_ITEMS for a in (*args, *kwargs.values())):
            raise SecurityError(f"an argument above {MAX_ITEMS} is not allowed in a template call")
        return super().call(__context, __obj, *args, **kwargs)


def _range(*args: int) -> range:
    """``range`` whose items count against the render's budget of :data:`MAX_ITEMS`."""
    items = range(*args)
    _budget.left = getattr(_budget, "left", MAX_ITEMS) - len(items)
    if _budget.left < 0:
        raise SecurityError(f"the template's loops exceed {MAX_ITEMS} range items")
    return items


_ENV = _BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
_ENV.globals["range"] = _range


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
    _budget.left = MAX_ITEMS
    try:
        out, size = [], 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise SecurityError(f"the output exceeds {MAX_OUTPUT} characters")
            out.append(chunk)
        return "".join(out)
    except RecursionError:
        raise TaskError(field, "template recursion too deep (a macro calling itself?)", source) from None
    except SecurityError as err:
        raise TaskError(field, f"template tried an unsafe or unbounded operation: {err}", source) from None
    except jinja2.UndefinedError as err:
        raise TaskError(field, f"template uses an undefined variable: {err.message} "
                               f"(available: {', '.join(sorted(variables))})", source) from None
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError, IndexError, KeyError, ArithmeticError,
            MemoryError) as err:
        raise TaskError(field, f"template failed to render: {type(err).__name__}: {err}", source) from None
