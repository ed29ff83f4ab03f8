"""Declared options: one declaration per configurable thing, checked with one-line errors.

Why here, and why annotations: a codec's options already are the keyword arguments of its
``__init__`` (name, type and default in one place, what Hydra nodes and the edge server's policy
read), and a link or compute profile's are the fields of its dataclass. Ranges and choices join
that same declaration as ``typing.Annotated`` metadata::

    def __init__(self, quality: Annotated[int, Range(1, 100)] = 75, abbreviated: bool = False)

so nothing is declared twice and every construction path (``create_codec``, a direct
``JpegCodec(quality=10)``, a worker process, the edge server) is checked by :func:`check` against
the same :class:`Option` list. YAML files restate the defaults for users to read; a test holds
them equal to the declarations (tests/test_options.py).
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Union

from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Numeric bounds, inclusive unless ``open_low`` (``Range(0, open_low=True)``: > 0)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def ok(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        if self.low is not None and self.high is not None and not math.isinf(self.high):
            return f"in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"<= {self.high:g}" if self.high is not None else ""


#: ``Positive``: a number > 0 (rate weights, temperatures, link rates)
Positive = Range(0, open_low=True)


class OneOf:
    """A string option's valid choices (``OneOf("laplace", "gaussian")``)."""

    def __init__(self, *choices: str) -> None:
        self.choices = tuple(choices)

    def ok(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)}"


_KIND_TEXT = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
              type(None): "null", list: "a list", dict: "a mapping"}


@dataclass(frozen=True)
class Option:
    """One declared option: its name, accepted kinds (int, float, bool, str, None, list, dict; empty:
    anything), default (``inspect.Parameter.empty``: required) and range/choices."""

    name: str
    kinds: tuple[type, ...]
    default: Any
    constraint: Range | OneOf | None = None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        parts = []
        for kind in self.kinds:
            text = _KIND_TEXT[kind]
            if self.constraint is not None and kind in (int, float, str):
                text = self.constraint.describe() if kind is str else f"{text} {self.constraint.describe()}"
            parts.append(text)
        return " or ".join(parts)

    def accepts(self, value: Any) -> bool:
        if not self.kinds:
            return True
        for kind in self.kinds:
            if _is_kind(value, kind):
                if kind in (int, float, str) and self.constraint is not None:
                    return self.constraint.ok(value)
                return True
        return False


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool or kind is type(None):
        return isinstance(value, kind)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind is list:
        return isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    if kind is dict:
        return isinstance(value, Mapping)
    return isinstance(value, kind)


def _kinds(annotation: Any) -> tuple[tuple[type, ...], Range | OneOf | None]:
    """(kinds, constraint) of a resolved annotation; no kinds for anything not plain data."""
    alternatives = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)
    kinds: list[type] = []
    constraint = None
    for alt in alternatives:
        if typing.get_origin(alt) is typing.Annotated:  # Annotated[float, Positive] | None
            alt, *meta = typing.get_args(alt)
            constraint = next((m for m in meta if isinstance(m, (Range, OneOf))), constraint)
        if typing.get_origin(alt) in (Union, types.UnionType):
            inner, inner_constraint = _kinds(alt)
            kinds += [k for k in inner if k not in kinds]
            constraint = inner_constraint or constraint
            if not inner:
                return (), constraint
            continue
        alt = typing.get_origin(alt) or alt
        alt = {tuple: list, Mapping: dict}.get(alt, alt)
        if alt is None:
            alt = type(None)
        if alt not in _KIND_TEXT:
            return (), constraint  # Any, objects, callables: the owner checks them itself
        if alt not in kinds:
            kinds.append(alt)
    return tuple(kinds), constraint


@functools.lru_cache(maxsize=None)
def declared(owner: Callable[..., Any]) -> tuple[Option, ...]:
    """The options a function (a codec's ``__init__``, a dataset factory) or dataclass declares."""
    fn = inspect.unwrap(owner)
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn, include_extras=True)
    except Exception:  # a plugin's annotation that does not resolve: names and defaults only
        hints = {}
    params = inspect.signature(fn).parameters
    out = []
    for name, p in params.items():
        if name == "self" or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        kinds, constraint = _kinds(hints[name]) if name in hints else ((), None)
        out.append(Option(name, kinds, p.default, constraint))
    return tuple(out)


def open_ended(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes ``**kwargs`` (it then names unknown options itself)."""
    params = inspect.signature(inspect.unwrap(fn)).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def did_you_mean(key: str, valid: list[str]) -> str:
    """`` (did you mean 'codec.quality'?)`` when one valid key is close (compared without the prefix)."""
    tail = {v.rsplit(".", 1)[-1]: v for v in valid}
    hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tail), n=1)
    return f" (did you mean {tail[hint[0]]!r}?)" if hint else ""


def check(options: Any, declared_options: tuple[Option, ...], where: str, owner: str = "",
          ignore: tuple[str, ...] = ()) -> None:
    """ConfigError for a non-mapping, an unknown key (with a did-you-mean), or a value outside its
    declared kind/range/choices. ``where`` prefixes keys (``codec``), ``owner`` names the thing."""
    of = f" for {owner}" if owner else ""
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"{where} options{f' for {owner!r}' if owner else ''} must be a mapping of option "
                          f"names to values, got {options!r}")
    by_name = {o.name: o for o in declared_options}
    for key in options:
        if key in ignore:
            continue
        if key not in by_name:
            valid = [f"{where}.{n}" for n in by_name]
            raise ConfigError(f"{where}{f' {owner!r}' if owner else ''} has no option {f'{where}.{key}'!r}"
                              f"{did_you_mean(f'{where}.{key}', valid)}; valid options: {', '.join(valid) or '(none)'}")
        opt = by_name[key]
        if not opt.accepts(options[key]):
            raise ConfigError(f"{where}.{key}{of} must be {opt.describe()}, got {options[key]!r}")


def defaults(declared_options: tuple[Option, ...]) -> dict[str, Any]:
    """``{name: default}`` of the options that have one (tuples as lists: as YAML and JSON see them)."""
    return {o.name: plain(o.default) for o in declared_options if not o.required}


def plain(value: Any) -> Any:
    """A value as configs and records hold it: tuples become lists, mappings plain dicts."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def build(cls: type, cfg: Mapping[str, Any], where: str, owner: str = "", ignore: tuple[str, ...] = ()) -> Any:
    """A dataclass (Link, ComputeProfile) from a config mapping: checked, then constructed."""
    spec = declared(cls)
    by_name = {o.name: o for o in spec}
    given = {k: v for k, v in cfg.items()  # null means "the default" unless the option accepts null
             if v is not None or (k in by_name and by_name[k].accepts(None))} if isinstance(cfg, Mapping) else cfg
    check(given, spec, where, owner, ignore)
    missing = [o.name for o in spec if o.required and o.name not in given]
    if missing:
        raise ConfigError(f"{where}.{missing[0]} is required")
    return cls(**{k: v for k, v in given.items() if k not in ignore})


__all__ = ["Range", "Positive", "OneOf", "Option", "declared", "check", "defaults", "plain", "build",
           "did_you_mean", "open_ended"]
