"""Typed, validated configuration dataclasses and their loading from YAML / dicts.

One dataclass per concern; each validates itself in ``__post_init__`` and raises
:class:`~metalm.errors.ConfigError` naming the field. :func:`from_dict` fills any of them (nested
dataclasses included) from plain data, rejecting unknown keys and wrongly typed values, and
:func:`load_yaml` does the same from a file, naming the file in every error.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")

_LAYER_SPEC = re.compile(r"^(all|top:\d+|bottom:\d+|\d+-\d+|\d+(,\d+)*)$")
_SHARED_SPEC = re.compile(r"^(none|norms|all|top:\d+)$")


def check_layer_spec(field: str, spec: str | None) -> None:
    """Check the syntax of a layer range: ``all``, ``top:K``, ``bottom:K``, ``A-B`` or ``A,B,C``."""
    if spec is not None and not _LAYER_SPEC.match(spec):
        raise ConfigError(field, f"{spec!r} is not a layer range (all, top:K, bottom:K, A-B or A,B,C)")


def layer_indices(spec: str, n_layers: int, field: str = "layers") -> list[int]:
    """Expand a layer range (``all``, ``top:K``, ``bottom:K``, ``A-B``, ``A,B,C``) to sorted indices.

    Raises:
        ConfigError: If the range is malformed or reaches past the model's ``n_layers`` layers.
    """
    check_layer_spec(field, spec)
    if spec == "all":
        return list(range(n_layers))
    if spec.startswith(("top:", "bottom:")):
        k = int(spec.split(":")[1])
        if not 1 <= k <= n_layers:
            raise ConfigError(field, f"{spec!r}: K must be in 1..{n_layers} for this model")
        return list(range(n_layers - k, n_layers)) if spec.startswith("top") else list(range(k))
    if "-" in spec:
        a, b = (int(x) for x in spec.split("-"))
        out = list(range(a, b + 1))
    else:
        out = sorted({int(x) for x in spec.split(",")})
    if not out or out[-1] >= n_layers:
        raise ConfigError(field, f"{spec!r} is outside the model's layers 0..{n_layers - 1}")
    return out


@dataclasses.dataclass
class AdapterConfig:
    """Which tensors the inner loop adapts (the *fast weights*).

    Attributes:
        kind: ``lora`` (PEFT LoRA), ``head`` (output embedding and final norm), ``bitfit`` (biases
            and norm weights) or ``full`` (every weight of the selected layers).
        rank: LoRA rank ``r``.
        alpha: LoRA scaling numerator (``scale = alpha / rank``).
        dropout: LoRA dropout; keep 0 for meta-learning (dropout makes the inner loop stochastic).
        target_modules: Module names LoRA wraps; ``None`` uses PEFT's default for the architecture.
        layers: Layer range the adapter covers (``all``, ``top:K``, ``bottom:K``, ``A-B``, ``A,B``);
            ``None`` means all layers. Ignored by ``head``.
    """

    kind: Literal["lora", "head", "bitfit", "full"] = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    layers: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 65_536:
            raise ConfigError("adapter.rank", f"must be >= 1 and <= 65536, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError("adapter.alpha", f"must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("adapter.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("adapter.target_modules", "must be null or a non-empty list")
        check_layer_spec("adapter.layers", self.layers)


@dataclasses.dataclass
class MetaConfig:
    """Which base-model weights the outer loop also updates (besides the adapter initialization).

    Attributes:
        shared: ``none`` (frozen LLM), ``norms`` (all norm weights), ``top:K`` (every weight of the
            top K layers and the final norm) or ``all``. Fast weights are never counted here.
    """

    shared: str = "none"

    def __post_init__(self) -> None:
        if not _SHARED_SPEC.match(self.shared):
            raise ConfigError("meta.shared", f"{self.shared!r} is not one of none, norms, top:K, all")


@dataclasses.dataclass
class InnerConfig:
    """The inner loop's update rule (``steps`` to ``eps`` and ``proximal``: :class:`metalm.UpdateRule`,
    built by ``UpdateRule.of(config)``) and how it is executed (``cache_prefix``, ``vmap``,
    ``vmap_chunk``, ``compile``, ``recompute``: the same result, another cost). See :func:`metalm.adapt`.

    Attributes:
        steps: Number of inner gradient steps on the support set.
        lr: Inner learning rate (the initial value when the algorithm learns it).
        first_order: Drop second-order terms (FOMAML-style meta-gradients).
        optimizer: ``sgd`` or a differentiable ``adam``.
        clip_grad_norm: Clip the global norm of each inner gradient to this value; ``None`` = off.
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.
        cache_prefix: Run the decoder layers below the lowest adapted or meta-learned layer once per
            batch instead of at every step (:func:`metalm.losses.cache_prefix`; the same values and
            gradients). Used when the inner loop takes 2 or more steps.
        vmap: Run the tasks of a meta-batch together with ``torch.func.vmap``
            (:mod:`metalm.batching`; the same losses and meta-gradients as the loop). Episodes with
            the same numbers of support and query rows run together; a lone one, or a model that
            does not run under ``vmap``, runs one by one. Peak memory holds the graphs of
            every task of a vmap call at once (see ``vmap_chunk``).
        vmap_chunk: Tasks per vmap call; each call's graph is freed by its backward before the
            next. ``0`` = the whole meta-batch in one call.
        compile: Run the support loss of first-order inner loops (FOMAML, Reptile, MAML++'s
            first-order phase, adaptation at evaluation) through ``torch.compile`` with dynamic
            shapes; second-order steps stay eager (compiled graphs have no double backward). The
            first steps pay the compilation (tens of seconds on CPU). Not with ``vmap``.
        recompute: Second-order loops keep no inner step's graph: each step is recomputed while
            the meta-backward passes through it (:mod:`metalm.recompute`). Memory of one step's
            graph instead of ``steps``, about one more forward and backward per step; the same
            meta-gradient. Not with ``vmap``; no effect on first-order loops.
        proximal: Add ``proximal/2 ||phi - phi_0||^2`` to the support loss, ``phi_0`` the starting
            values (iMAML's lambda; evaluation adapts with the same term); 0 = off.
    """

    steps: int = 5
    lr: float = 0.05
    first_order: bool = False
    optimizer: Literal["sgd", "adam"] = "sgd"
    clip_grad_norm: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    cache_prefix: bool = True
    vmap: bool = False
    vmap_chunk: int = 0
    compile: bool = False
    recompute: bool = False
    proximal: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 10_000:
            raise ConfigError("inner.steps", f"must be >= 1 and <= 10000, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError("inner.lr", f"must be > 0, got {self.lr}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError("inner.clip_grad_norm", f"must be > 0 or null, got {self.clip_grad_norm}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("inner.betas", f"each must be in [0, 1), got {self.betas}")
        if self.eps <= 0:
            raise ConfigError("inner.eps", f"must be > 0, got {self.eps}")
        if self.compile and self.vmap:
            raise ConfigError("inner.compile", "cannot be combined with inner.vmap (choose one)")
        if self.proximal < 0:
            raise ConfigError("inner.proximal", f"must be >= 0 (0 = off), got {self.proximal}")
        if self.recompute and self.vmap:
            raise ConfigError("inner.recompute", "cannot be combined with inner.vmap (choose one)")
        if self.vmap_chunk < 0:
            raise ConfigError("inner.vmap_chunk", f"must be >= 0 (0 = the whole meta-batch), got {self.vmap_chunk}")


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, field: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, field, source)
            except ConfigError as err:
                errors.append(err.message)
        raise ConfigError(field, "; ".join(errors), source)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(field, f"{value!r} is not one of {', '.join(map(str, choices))}", source)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a mapping, got {type(value).__name__}", source)
        return from_dict(tp, value, source=source, prefix=field)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"expected a list, got {type(value).__name__}", source)
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(field, f"expected {len(args)} items, got {len(value)}", source)
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_convert(v, a, f"{field}[{i}]", source) for i, (v, a) in pairs)
        item = args[0] if args else Any
        items = [_convert(v, item, f"{field}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a mapping, got {type(value).__name__}", source)
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(k, kt, field, source): _convert(v, vt, f"{field}.{k}", source) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, f"expected a number, got {value!r}", source)
        if not math.isfinite(value):
            raise ConfigError(field, f"expected a finite number, got {value!r}", source)
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            hint = " (YAML reads yes/no/on/off/true/false unquoted as booleans: quote it)" \
                if tp is str and isinstance(value, bool) else ""
            raise ConfigError(field, f"expected {_type_name(tp)}, got {value!r}{hint}", source)
        return value
    raise TypeError(f"unsupported annotation {tp!r} on {field}")


def from_dict(cls: type[T], data: dict[str, Any], *, source: str | None = None, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, checking every key and value.

    Args:
        cls: A dataclass type.
        data: Plain data (from YAML, JSON or the CLI).
        source: File the data came from; named in errors.
        prefix: Dotted path of ``data`` inside a larger config; named in errors.

    Raises:
        ConfigError: On an unknown key, a wrongly typed value or a value the dataclass rejects.
    """
    if not isinstance(data, dict):
        raise ConfigError(prefix or cls.__name__, f"expected a mapping, got {type(data).__name__}", source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = (prefix + ".") if prefix else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(dotted + str(unknown[0]), f"unknown field (known: {', '.join(sorted(fields))})", source)
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory
        if isinstance(value, dict) and default is not dataclasses.MISSING and dataclasses.is_dataclass(hints[name]):
            # A partial section overrides this class's default for it (FOMAML's inner is first-order).
            value = deep_merge(to_dict(default()), value)
        kwargs[name] = _convert(value, hints[name], dotted + name, source)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(dotted + missing[0], "required field is missing", source)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # Dataclasses name fields as "<section>.<field>"; re-root the path where this section sits.
        field = dotted + err.field.split(".", 1)[-1] if dotted else err.field
        raise ConfigError(field, err.message, source) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively for nested mappings (neither is modified)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (tuples become lists), the inverse of :func:`from_dict`."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with two fixes every metalm file and override goes through: ``1e-3``
    is a number (YAML 1.1 reads exponents without a dot as strings), and a key written twice in a
    mapping is an error instead of the last one silently winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable) or isinstance(key, tuple):
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a scalar",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text safely (no Python objects), with ``1e-3`` as a number and duplicate keys refused.

    Raises:
        yaml.YAMLError: On malformed YAML, a duplicate key or nesting deeper than ``MAX_DEPTH``
            (callers name the file).
    """
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels") from None
    stack = [(data, 0)]
    while stack:  # iterative: the check itself must not recurse
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children)
    return data


MAX_DEPTH = 64


def read_yaml(path: str | Path, error: type[ConfigError] = ConfigError, what: str = "") -> Any:
    """Read and parse one YAML file (:func:`yaml_load`'s limits); the one place that does.

    Raises:
        ConfigError: ``error`` (a :class:`ConfigError` subclass) naming ``path`` and ``<file>`` (cannot
            read it, not UTF-8; ``what`` names the kind of file) or ``<yaml>`` (malformed YAML).
    """
    path, cannot = Path(path), f"cannot read{' the ' + what if what else ''}"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise error("<file>", f"{cannot}: not UTF-8 ({err.reason} at byte {err.start})", str(path)) from None
    except OSError as err:
        raise error("<file>", f"{cannot}: {err.strerror or err}", str(path)) from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as err:
        raise error("<yaml>", "malformed YAML: " + " ".join(str(err).split()), str(path)) from None


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into the dataclass ``cls``; every error names ``path``."""
    data = read_yaml(path)
    return from_dict(cls, data if data is not None else {}, source=str(path))


def field_help(cls: type) -> dict[str, str]:
    """The help of each field, from the ``Attributes:`` sections of the docstrings of ``cls`` and
    its bases (a subclass's entry wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(_attributes(klass.__dict__.get("__doc__") or ""))
    return out


def _attributes(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    lines = doc.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return out
    indent, name = None, None
    for line in lines[start:]:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        indent = indent if indent is not None else width
        if width < indent:
            break
        head, sep, rest = line.strip().partition(":")
        if width == indent and sep and head.isidentifier():
            name, out[head] = head, rest.strip()
        elif name:
            out[name] += " " + line.strip()
    return out


def describe(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every field of a config dataclass (a class whose fields all have defaults, or an instance),
    nested sections dotted: ``(key, value, help)``; a section's own row has value ``dataclasses.MISSING``."""
    obj = config() if isinstance(config, type) else config
    helps = field_help(type(obj))
    rows: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.append((prefix + f.name, dataclasses.MISSING, helps.get(f.name, "")))
            rows += describe(value, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, value, helps.get(f.name, "")))
    return rows
