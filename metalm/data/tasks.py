"""Task definitions as data: one YAML file per task under ``tasks/``, indexed by name.

A definition names its data source, how an example becomes a prompt (a sandboxed Jinja2
template over the example's fields), its answer (a label verbalized as text, a per-example option,
a reference string, or the text itself for language modeling) and its metric. Loading validates
every field and raises :class:`~metalm.errors.TaskError` naming the file and the field.

Example (``tasks/bigbench/navigate.yaml``)::

    name: navigate
    type: classification
    source: {kind: bigbench, task: navigate}
    template: "{{ input }}\\nA:"
    labels: ["False", "True"]
    verbalizers: {"False": "no", "True": "yes"}
    metric: accuracy
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from ..config import from_dict, read_yaml
from ..errors import ConfigError, TaskError
from .templates import compile_template, render

TaskType = Literal["classification", "multiple_choice", "generation", "language_modeling"]
SourceKind = Literal["bigbench", "pool", "bbc_news", "shakespeare", "json", "jsonl", "csv", "hf", "disk"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


@dataclasses.dataclass
class SourceSpec:
    """Where a task's examples come from.

    Attributes:
        kind: ``bigbench`` (a ``task.json`` of the packaged BIG-bench), ``pool`` (a data set of the
            pinned task pool, :mod:`metalm.data.pool_sources`), ``bbc_news``,
            ``shakespeare``, local ``json`` / ``jsonl`` / ``csv`` files, ``hf`` (``datasets.load_dataset``
            with a hub name or data files) or ``disk`` (``datasets.load_from_disk``).
        task: BIG-bench task path, e.g. ``fact_checker/fever``.
        path: File or folder for ``json``, ``jsonl``, ``csv`` and ``disk`` (relative to the YAML file).
        name: Dataset name for ``hf`` (e.g. ``glue``), or a builder (``json``, ``csv``) with ``data_files``;
            for ``pool``, the data set (``blimp``, ``tweeteval``, ``clinc150``, ...).
        config: Dataset configuration for ``hf`` (e.g. ``sst2``); for ``pool``, the subset (a BLiMP
            phenomenon, a CLINC150 domain, ...).
        split: Split to read for ``hf``, ``disk`` and ``pool``.
        data_files: Data files for ``hf`` builders (relative to the YAML file).
        files: For ``shakespeare``: which plays (file stems, e.g. ``hamlet``); all when omitted.
        chunk_chars: For ``shakespeare``: characters per language-modeling example.
        fallback_encoding: Text files are UTF-8; one that is not is decoded with this encoding
            instead of raising (BBC News has one cp1252 file). ``None``: non-UTF-8 is an error.
    """

    kind: SourceKind
    task: str | None = None
    path: str | None = None
    name: str | None = None
    config: str | None = None
    split: str = "train"
    data_files: list[str] | None = None
    files: list[str] | None = None
    chunk_chars: int = 1000
    fallback_encoding: str | None = None

    def __post_init__(self) -> None:
        need = {"bigbench": "task", "json": "path", "jsonl": "path", "csv": "path", "disk": "path", "hf": "name",
                "pool": "name"}
        key = need.get(self.kind)
        if key and not getattr(self, key):
            raise ConfigError(f"source.{key}", f"required for source kind {self.kind!r}")
        if self.fallback_encoding is not None:
            import codecs

            try:
                codecs.lookup(self.fallback_encoding)
            except LookupError:
                raise ConfigError("source.fallback_encoding", f"unknown encoding {self.fallback_encoding!r}") from None
        if self.chunk_chars < 50:
            raise ConfigError("source.chunk_chars", f"must be >= 50, got {self.chunk_chars}")


@dataclasses.dataclass
class TaskSpec:
    """One task definition (the schema of a ``tasks/**/*.yaml`` file).

    Attributes:
        name: Unique task name (lower case, digits, ``_ . -``).
        type: ``classification`` (fixed label set), ``multiple_choice`` (per-example options),
            ``generation`` (free text scored against a reference) or ``language_modeling``.
        source: Where the examples come from.
        template: Prompt template (sandboxed Jinja2) over the example's fields.
        target_prefix: Text between the prompt and the answer (usually a space).
        target_field: Field holding the label (classification: a label; multiple choice: the
            index of the right option), the reference (generation: a string, or a list of acceptable
            references whose first is the one trained on) or the text (language modeling).
        options_field: Field holding the per-example options (multiple choice).
        labels: The label set (classification), in a fixed order.
        verbalizers: Label -> answer text (classification); a missing label is its own text.
        metric: ``accuracy``, ``exact_match``, ``token_f1`` or ``perplexity``.
        description: What the task asks.
        keywords: Free tags (BIG-bench keywords are kept).
        canary: Provenance marker of the source data (BIG-bench's canary string is kept).
        drop_empty: Drop examples whose prompt fields or answer are empty instead of raising.
        max_shots: The most shots per class (classification) or per episode (other types) the
            data supports with 4 queries, as recorded when the file was generated; ``None``: not
            recorded. The sampler checks the data itself and names this figure when asked for more.
    """

    name: str
    type: TaskType
    source: SourceSpec
    template: str = "{{ input }}"
    target_prefix: str = " "
    target_field: str = "label"
    options_field: str = "options"
    labels: list[str] | None = None
    verbalizers: dict[str, str] | None = None
    metric: Literal["accuracy", "exact_match", "token_f1", "perplexity"] = "accuracy"
    description: str = ""
    keywords: list[str] = dataclasses.field(default_factory=list)
    canary: str = ""
    drop_empty: bool = False
    max_shots: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError("name", f"{self.name!r} must be lower case letters, digits and _ . - only")
        if self.type == "classification":
            if not self.labels or len(self.labels) < 2:
                raise ConfigError("labels", "a classification task needs at least 2 labels")
            if len(set(self.labels)) != len(self.labels):
                raise ConfigError("labels", "labels must be distinct")
        elif self.labels is not None:
            raise ConfigError("labels", f"only classification tasks have a fixed label set, not {self.type}")
        if self.verbalizers is not None:
            if self.type != "classification":
                raise ConfigError("verbalizers", "only classification tasks have verbalizers")
            unknown = sorted(set(self.verbalizers) - set(self.labels or []))
            if unknown:
                raise ConfigError("verbalizers", f"{unknown[0]!r} is not one of the labels")
            texts = [self.verbalize(lab) for lab in self.labels or []]
            if len(set(texts)) != len(texts) or not all(t.strip() for t in texts):
                raise ConfigError("verbalizers", "verbalized labels must be distinct and non-empty")
        if self.max_shots is not None and self.max_shots < 1:
            raise ConfigError("max_shots", f"must be >= 1 (or absent), got {self.max_shots}")
        if not self.template.strip() and self.type != "language_modeling":
            raise ConfigError("template", "is empty: the prompt would show the model nothing of the example")
        compile_template(self.template, "template")
        want_metric = {"classification": ("accuracy",), "multiple_choice": ("accuracy",),
                       "generation": ("exact_match", "token_f1"), "language_modeling": ("perplexity",)}[self.type]
        if self.metric not in want_metric:
            raise ConfigError("metric", f"{self.metric!r} does not fit a {self.type} task "
                                        f"(use {', '.join(want_metric)})")

    def verbalize(self, label: str) -> str:
        """The answer text of a classification label."""
        return (self.verbalizers or {}).get(label, label)

    def prompt(self, example: dict[str, Any], source: str | None = None) -> str:
        """Render the prompt of one example."""
        return render(self.template, example, "template", source)


def parse_task(data: Any, source: str | None = None) -> TaskSpec:
    """Validate plain data as a :class:`TaskSpec`; every error is a :class:`TaskError` naming ``source``."""
    try:
        return from_dict(TaskSpec, data, source=source)
    except TaskError:
        raise
    except ConfigError as err:
        raise TaskError(err.field, err.message, source) from None


def load_task_file(path: str | Path) -> TaskSpec:
    """Read and validate one task YAML file."""
    path = Path(path)
    data = read_yaml(path, TaskError)
    spec = parse_task(data, str(path))
    spec_dir = path.parent
    # Local paths in a definition are relative to its file.
    src = spec.source
    if src.path and not Path(src.path).is_absolute() and src.kind in ("json", "jsonl", "csv", "disk"):
        src.path = str(spec_dir / src.path)
    if src.data_files:
        src.data_files = [f if Path(f).is_absolute() or "://" in f else str(spec_dir / f) for f in src.data_files]
    return spec
