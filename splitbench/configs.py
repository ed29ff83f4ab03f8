"""Config nodes for codecs that ship no YAML: ``codec=<plugin>`` works without touching conf/.

A codec's options are the keyword arguments of its ``__init__`` (splitbench.codecs.base), so a
codec registered through an entry point gets a Hydra ConfigStore node in group ``codec`` built
from their defaults. An option without a default becomes a required value (``???``). A codec that
has a YAML anywhere on Hydra's search path (``conf/codec/<name>.yaml``, or a plugin's own config
directory added with ``hydra.searchpath``) keeps that instead.
"""
from __future__ import annotations

import inspect
from typing import Any

from omegaconf import MISSING

_PLAIN = (type(None), bool, int, float, str)


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, _PLAIN)


def codec_defaults(cls: type) -> dict[str, Any]:
    """``{"name": ..., option: default}`` from the codec's keyword arguments.

    Defaults that are not plain data (objects, callables) are left out: the codec keeps its own.
    """
    node: dict[str, Any] = {"name": cls.name}  # type: ignore[attr-defined]
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        if param.default is param.empty:
            node[name] = MISSING
        elif _plain(param.default):
            node[name] = list(param.default) if isinstance(param.default, tuple) else param.default
    return node


def store_plugin_configs() -> list[str]:
    """Store a ``codec/<name>`` node for every registered codec without a YAML; returns their names."""
    from hydra.core.config_store import ConfigStore

    from .codecs import CODECS, list_codecs
    from .paths import CONF_DIR

    have_yaml = {p.stem for p in (CONF_DIR / "codec").glob("*.yaml")}
    store = ConfigStore.instance()
    stored = []
    for name in list_codecs():
        if name in have_yaml:
            continue
        store.store(group="codec", name=name, node=codec_defaults(CODECS.get(name)),
                    provider="splitbench-plugin")
        stored.append(name)
    return stored
