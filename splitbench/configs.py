"""Config nodes for plugins that ship no YAML: ``codec=<plugin>`` works without touching conf/.

A codec's options are the declared keyword arguments of its ``__init__`` (splitbench.options), and
a dataset's or model's those of its registered factory, so each one registered without a YAML in
``conf/<group>/`` gets a Hydra ConfigStore node (groups ``codec``, ``data``, ``model``) built from
their defaults. An option without a default becomes a required value (``???``, checked by the CLI).
"""
from __future__ import annotations

from typing import Any

from omegaconf import MISSING

from .options import declared, plain

def _plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, (type(None), bool, int, float, str))


def option_defaults(name: str, factory: Any) -> dict[str, Any]:
    """``{"name": name, option: default}`` from a codec class's or factory's declared options
    (splitbench.options). Defaults that are not plain data (objects, callables) are left out: the
    factory keeps its own.
    """
    owner = factory.__init__ if isinstance(factory, type) else factory
    node: dict[str, Any] = {"name": name}
    for option in declared(owner):
        if option.required:
            node[option.name] = MISSING
        elif _plain(plain(option.default)):
            node[option.name] = plain(option.default)
    return node


def _registries() -> dict[str, Any]:
    from .codecs import CODECS
    from .data import DATASETS
    from .models import MODELS

    return {"codec": CODECS, "data": DATASETS, "model": MODELS}


def _yaml_names(group: str) -> set[str]:
    """Registered names a YAML of ``conf/<group>/`` already configures (file stem or ``name:``)."""
    import yaml

    from .paths import CONF_DIR

    names = set()
    for path in (CONF_DIR / group).glob("*.yaml"):
        names.add(path.stem)
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            names.add(data["name"])
    return names


def store_plugin_configs(groups: tuple[str, ...] = ("codec", "data", "model")) -> list[str]:
    """Store ``<group>/<name>`` nodes for registered entries without a YAML; returns ``group/name``s."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    stored = []
    registries = _registries()
    for group in groups:
        registry, have_yaml = registries[group], _yaml_names(group)
        for name in registry.names():
            if name in have_yaml:
                continue
            node = option_defaults(name, registry.get(name))
            if group == "data":
                node.setdefault("limit", None)  # build_dataset's own key (first N samples)
            store.store(group=group, name=name, node=node, provider="splitbench-plugin")
            stored.append(f"{group}/{name}")
    return stored
