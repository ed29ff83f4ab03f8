"""Codec protocol and registry: ``@register_codec``, ``create_codec``, ``list_codecs``."""
from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from .base import Codec, Payload, accepted_options, check_options

CODECS: Registry[Codec] = Registry("codec")


def register_codec(name: str) -> Callable[[type[Codec]], type[Codec]]:
    """Class decorator that makes a codec available as ``codec=<name>``."""

    def decorator(cls: type[Codec]) -> type[Codec]:
        cls.name = name
        CODECS.register(name)(cls)
        return cls

    return decorator


def _load_builtin() -> None:
    # The baselines package registers its codecs on import; importing it lazily keeps
    # `import splitbench` light and lets third-party packages register theirs the same way.
    import baselines  # noqa: F401


def list_codecs() -> list[str]:
    _load_builtin()
    return CODECS.names()


def create_codec(name: str, **options: Any) -> Codec:
    """Build a codec by name; unknown names and options raise a ConfigError listing valid ones."""
    _load_builtin()
    cls = CODECS.get(name)
    check_options(cls, options)  # type: ignore[arg-type]
    codec = cls(**options)
    codec._options = dict(options)  # type: ignore[attr-defined]
    return codec


__all__ = [
    "Codec", "Payload", "register_codec", "create_codec", "list_codecs", "accepted_options", "CODECS",
]
