"""Codec protocol and registry: ``@register_codec``, ``create_codec``, ``list_codecs``.

Codecs come from the ``splitbench.codecs`` entry-point group (the built-ins in ``baselines`` are
declared there too; see splitbench.registry), loaded on first use.
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError
from ..registry import Registry
from .base import Codec, Payload, accepted_options, building_for, check_options



def _adopt(name: str, cls: Any) -> None:
    """An entry point naming a Codec class registers it under the entry point's name."""
    if not (isinstance(cls, type) and issubclass(cls, Codec)):
        raise ConfigError(f"codec plugin {name!r} names {cls!r}, which is not a splitbench Codec subclass")
    register_codec(name)(cls)


CODECS: Registry[Codec] = Registry("codec", group="splitbench.codecs", adopt=_adopt)


def register_codec(name: str) -> Callable[[type[Codec]], type[Codec]]:
    """Class decorator that makes a codec available as ``codec=<name>``."""

    def decorator(cls: type[Codec]) -> type[Codec]:
        cls.name = name
        CODECS.register(name)(cls)
        return cls

    return decorator


def list_codecs() -> list[str]:
    return CODECS.names()


def create_codec(name: str, *, for_model: str | None = None, **options: Any) -> Codec:
    """Build a codec by name; unknown names and options raise a ConfigError listing valid ones
    (the codec's own constructor checks and records its options: splitbench.codecs.base).
    ``for_model`` names the task model it will serve, so shipped weights trained for that model
    are chosen (splitbench.zoo.resolve)."""
    cls = CODECS.get(name)
    check_options(cls, options)  # type: ignore[arg-type]  (a non-mapping never reaches **)
    with building_for(for_model):
        return cls(**options)


__all__ = [
    "Codec", "Payload", "register_codec", "create_codec", "list_codecs", "accepted_options", "CODECS",
]
