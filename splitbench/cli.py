"""Command-line guards: one-line errors for the mistakes users make most.

Hydra's own messages for an unknown config option span several lines and end in a traceback hint;
``guard_overrides`` checks every override against the configuration Hydra itself would compose
(the YAML files plus the nodes registered for plugin codecs, see splitbench.configs) before any
run directory exists: group choices (``codec=nosuch``), group keys (``codec.qualty=5``) and plain
keys (``bandwith=10mbps``, ``measure.thread=1``), and paper recipes (``+experiment=NAME``, conf/experiment/:
a wrong name gets a did-you-mean; the keys after it are checked against the recipe's choices). ``report_errors`` turns a
:class:`SplitbenchError` raised inside a job into ``splitbench: error: <message>``, exit status 2,
with the job's partial output removed.
"""
from __future__ import annotations

import difflib
import functools
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import SplitbenchError

EXIT_USAGE = 2

PLURAL = {"codec": "codecs", "bandwidth": "bandwidth presets", "data": "datasets", "model": "models",
          "device": "device profiles", "server": "server profiles", "experiment": "experiments"}
EXPERIMENT = "experiment"  # conf/experiment/: recipes that add to the defaults (+experiment=NAME)
#: flags that change which configuration is composed: the guard then leaves everything to Hydra
_CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")


def fail(message: str) -> None:
    print(f"splitbench: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _did_you_mean(key: str, valid: list[str]) -> str:
    hint = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _keys(node: Any, prefix: str) -> list[str]:
    return [f"{prefix}{k}" for k in node if k != "name"] if hasattr(node, "keys") else []


class _Composer:
    """Composes configurations the way the app will (same search path, same ConfigStore), cached."""

    def __init__(self, config_name: str, loader: Any) -> None:
        self.config_name = config_name
        self.loader = loader
        self._cache: dict[tuple[str, ...], Any] = {}

    def compose(self, overrides: list[str]) -> Any:
        from hydra import compose

        key = tuple(overrides)
        if key not in self._cache:
            self._cache[key] = compose(config_name=self.config_name, overrides=overrides,
                                       return_hydra_config=True)
        return self._cache[key]


def _parse(args: list[str]) -> list[Any] | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    plain = [a for a in args if not a.startswith("-")]
    try:
        return OverridesParser.create().parse_overrides(plain)
    except HydraException:
        return None  # a syntax error: Hydra explains it better than a guess here


def _choices(override: Any) -> list[str | None]:
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    if override.is_sweep_override():
        return []  # interval/glob sweeps: nothing to check here
    value = override.value()
    return [value if value is None else str(value)]


PLUGIN_GROUPS = ("codec", "data", "model")


def _names_plugin_without_yaml(overrides: list[Any]) -> bool:
    """Whether a codec/data/model choice has no YAML (a plugin, or a typo): only then load plugins."""
    from .paths import CONF_DIR

    for o in overrides:
        if o.key_or_group in PLUGIN_GROUPS and not o.is_delete():
            choices = _choices(o)
            if not choices or any(c is not None and not (CONF_DIR / o.key_or_group / f"{c}.yaml").is_file()
                                  for c in choices):
                return True
    return False


def guard_overrides(args: list[str], config_name: str = "config") -> None:
    """Reject unknown group choices and unknown keys with one line; leave the rest to Hydra.

    When a ``codec=``/``data=``/``model=`` choice has no YAML it also stores the config nodes of
    plugins (splitbench.configs) for the app to compose; otherwise no codec is imported here.
    """
    skip = any(a.split("=")[0] in _CONFIG_FLAGS for a in args) or any(a in ("--help", "-h", "--hydra-help")
                                                                       for a in args)
    overrides = None if skip else _parse(args)
    if overrides is None or _names_plugin_without_yaml(overrides):
        from .configs import store_plugin_configs

        try:
            store_plugin_configs()  # the app composes with them too (same process)
        except SplitbenchError as err:  # e.g. a plugin that fails to import
            fail(str(err))
    if overrides is None:
        return
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        _check(overrides, _Composer(config_name, loader))


def _experiments(overrides: list[Any], composer: _Composer, groups: list[str]) -> list[str]:
    """The ``+experiment=`` overrides (checked: names, the + prefix), to compose the base with them."""
    if EXPERIMENT not in groups:
        return []
    valid = composer.loader.get_group_options(EXPERIMENT)
    base: list[str] = []
    for o in overrides:
        if o.key_or_group != EXPERIMENT or o.is_delete():
            continue
        choices = _choices(o)
        if not (o.is_add() or o.is_force_add()):
            fail(f"{EXPERIMENT}={','.join(map(str, choices))}: a recipe adds to the defaults, write "
                 f"+{EXPERIMENT}={','.join(map(str, choices))}; valid {PLURAL[EXPERIMENT]}: {', '.join(valid)}")
        for value in choices:
            if value is None or value not in valid:
                fail(f"unknown {EXPERIMENT} {value!r}{_did_you_mean(str(value), valid)}; valid "
                     f"{PLURAL[EXPERIMENT]}: {', '.join(valid)}")
        if choices:
            base.append(f"+{EXPERIMENT}={choices[0]}")
    return base


def _check(overrides: list[Any], composer: _Composer) -> None:
    groups = [g for g in composer.loader.list_groups("") if g != "hydra"]
    experiments = _experiments(overrides, composer, groups)
    checked = [o for o in overrides if not (o.is_add() or o.is_force_add() or o.is_delete() or o.package)
               and not o.key_or_group.startswith("hydra") and o.key_or_group != EXPERIMENT]
    chosen: dict[str, list[str | None]] = {}
    for o in checked:
        group = o.key_or_group
        if group not in groups:
            continue
        valid = composer.loader.get_group_options(group)
        for value in _choices(o):
            if value is not None and value not in valid:
                extra = "; or set bandwidth.mbps=X (and bandwidth.rtt_ms=Y)" if group == "bandwidth" else ""
                fail(f"unknown {group} {value!r}; valid {PLURAL.get(group, group + ' options')}: "
                     f"{', '.join(valid)}{extra}")
        chosen[group] = _choices(o)
    # the base configuration: the recipe, then the first choice of each group override (top-level keys do
    # not depend on it); a recipe's group choices are the defaults of the keys checked below
    base_overrides = experiments + [f"{g}={v[0]}" for g, v in chosen.items() if v and v[0] is not None]
    base = composer.compose(base_overrides)
    defaults = dict(base.hydra.runtime.choices)

    def node_of(group: str, choice: str) -> Any:
        """The group's node for ``choice``: the base holds its own choice (a composition is ~0.2 s)."""
        if choice == defaults.get(group) and group in base:
            return base[group]
        return composer.compose([f"{group}={choice}"])[group]

    for o in checked:
        key = o.key_or_group
        if key in groups:
            continue
        head, _, rest = key.partition(".")
        if head in groups and rest:
            for choice in chosen.get(head, [defaults.get(head)]):
                _check_group_key(composer, node_of, key, head, rest, choice)
        else:
            _check_plain_key(base, key, groups)
    for group, choices in chosen.items():  # a plugin codec's option without a default
        for choice in choices:
            if choice is not None:
                _check_missing(node_of(group, choice), group, choice)


def _check_group_key(composer: _Composer, node_of: Callable[[str, str], Any], key: str, group: str, rest: str,
                     choice: str | None) -> None:
    if choice in (None, "null"):
        fail(f"{key} is set but no {group} is selected; add {group}=<one of "
             f"{', '.join(composer.loader.get_group_options(group))}>")
    conf = node_of(group, choice)
    node: Any = conf
    for part in rest.split("."):
        if not hasattr(node, "keys") or part not in node:
            valid = _keys(conf, f"{group}.")
            fail(f"{group} {choice!r} has no option {key!r}{_did_you_mean(key, valid)}; valid options: "
                 f"{', '.join(sorted(valid))} (prefix with + to add a new key)")
        node = node[part]


def _check_plain_key(base: Any, key: str, groups: list[str]) -> None:
    node: Any = base
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            prefix = ".".join(parts[:depth])
            valid = sorted(_keys(node, f"{prefix}." if prefix else "") if depth else
                           [k for k in node if k != "hydra"])
            fail(f"unknown config key {key!r}{_did_you_mean(key, valid)}; valid keys: {', '.join(valid)} "
                 "(prefix with + to add a new key)")
        node = node[part]


def _check_missing(conf: Any, group: str, choice: str) -> None:
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(conf)) if hasattr(conf, "keys") else []
    if missing:
        fail(f"{group} {choice!r} needs {', '.join(f'{group}.{m}=<value>' for m in missing)} (no default)")


def report_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task: a SplitbenchError becomes one line + exit 2, leaving no partial output."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SplitbenchError as err:
            _remove_partial_output()
            fail(str(err))

    return wrapper


def _remove_partial_output() -> None:
    try:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    if out.is_dir() and not (out / "results.csv").exists():
        shutil.rmtree(out, ignore_errors=True)
