"""Exception types raised by metalm.

Every error metalm raises on bad input is a :class:`MetalmError`; configuration problems are a
:class:`ConfigError` that names the file (when there is one) and the field at fault.
"""

from __future__ import annotations


class MetalmError(Exception):
    """Base class of the errors metalm raises on bad input or unsupported use."""


class ConfigError(MetalmError, ValueError):
    """A configuration value is missing, unknown or invalid.

    Args:
        field: Dotted path of the field at fault, e.g. ``"inner.steps"``.
        message: What is wrong with it.
        source: The file the value came from, if any.
    """

    def __init__(self, field: str, message: str, source: str | None = None) -> None:
        self.field = field
        self.source = source
        self.message = message
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}")


class BatchError(MetalmError, ValueError):
    """A batch handed to the inner loop or a loss is malformed (missing keys, bad shapes, no targets)."""


class AnswerTooLong(BatchError):
    """An example's answer alone is longer than ``collate.max_length``: it cannot be trained on."""


class TaskError(ConfigError):
    """A task definition, its data or a split is invalid; names the file and the field at fault.

    Raised for malformed YAML, missing or misspelled fields, unknown sources, unsafe or broken
    templates, classes with too few examples, empty text, non-UTF-8 files, duplicate task names
    and empty or overlapping splits.
    """


class DataNotFoundError(MetalmError, FileNotFoundError):
    """Packaged data is not in the cache; the message names the ``metalm download`` command to run."""


class PackageUnavailableError(MetalmError):
    """The package registry answered that it does not serve a data or model package (a version removed
    or refused, not a network fault); ``metalm download NAME --from PATH`` reads a copy you have."""


class NonFiniteError(MetalmError, FloatingPointError):
    """A loss, gradient or weight became NaN or infinite (training stopped; nothing non-finite was saved)."""


class DivergedError(NonFiniteError):
    """Training stopped learning: its meta-gradient was exactly zero for several steps in a row (an inner
    loop diverged into saturation: finite values, no signal). Nothing from those steps was applied."""
