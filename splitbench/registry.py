"""A small typed registry whose entries also come from Python entry points (plugins).

Every registry names an entry-point group (``splitbench.codecs``, ``splitbench.datasets``,
``splitbench.models``). The first time a registry is consulted it loads that group once:

* an entry point naming a **module** (``mycodec = "my_pkg.codec"``) is imported, and the
  ``@register_...`` decorators in it register whatever it defines;
* an entry point naming an **object** (``mycodec = "my_pkg.codec:MyCodec"``) is registered under
  the entry point's name unless importing it already registered that name.

Built-ins are declared the same way in this project's pyproject.toml. A source checkout whose
installed metadata lacks them (never installed, or installed before they were declared) reads the
same declarations from its pyproject.toml, so there is one list, not two.
"""
from __future__ import annotations

import difflib
import sys
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")
DIST_NAME = "splitbench"


class Registry(Generic[T]):
    """Maps names to factories; ``register`` is a decorator; ``group`` names the plugin entry points."""

    def __init__(self, kind: str, group: str | None = None,
                 adopt: Callable[[str, Any], None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._adopt = adopt
        self._entries: dict[str, Callable[..., T]] = {}
        self._loaded = group is None

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = factory
            return factory

        return decorator

    # -- plugins -------------------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Load the entry-point group once; a plugin that fails to import is a one-line ConfigError."""
        if self._loaded:
            return
        self._loaded = True  # set first: a plugin importing splitbench must not recurse here
        assert self.group is not None
        for ep in plugin_entry_points(self.group):
            try:
                obj = ep.load()
            except Exception as err:  # any import-time failure of third-party code
                self._loaded = False
                origin = f" from {ep.dist.name}" if getattr(ep, "dist", None) else ""
                first = str(err).splitlines()[0] if str(err) else ""
                raise ConfigError(f"{self.kind} plugin {ep.name!r} ({ep.value}{origin}) failed to import: "
                                  f"{type(err).__name__}: {first}") from None
            if not isinstance(obj, ModuleType) and ep.name not in self._entries:
                if not callable(obj):
                    raise ConfigError(f"{self.kind} plugin {ep.name!r} ({ep.value}) is neither a module nor "
                                      "a class/factory")
                (self._adopt or (lambda n, o: self.register(n)(o)))(ep.name, obj)

    # -- lookup ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        self.load_plugins()
        if name not in self._entries:
            hint = difflib.get_close_matches(name, self.names(), n=1)
            near = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{near}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]


def plugin_entry_points(group: str) -> list[EntryPoint]:
    """Installed entry points of ``group``, plus this checkout's own if its metadata lacks them."""
    found = list(entry_points(group=group))
    if not any(_dist_name(ep) == DIST_NAME for ep in found):
        names = {ep.name for ep in found}
        found += [ep for ep in source_entry_points(group) if ep.name not in names]
    return found


def source_entry_points(group: str) -> list[EntryPoint]:
    """The entry points this checkout's pyproject.toml declares for ``group`` (none when installed)."""
    from .paths import REPO_ROOT, running_from_source

    pyproject = REPO_ROOT / "pyproject.toml"
    if not running_from_source() or not pyproject.is_file():
        return []
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover  (Python 3.10: the tomli backport, a declared dependency there)
        import tomli as tomllib
    declared = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {}).get(group, {})
    return [EntryPoint(name=name, value=value, group=group) for name, value in declared.items()]


def _dist_name(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else None

