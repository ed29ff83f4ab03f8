"""Command-line guards: one-line errors for the mistakes users make most.

Hydra's own messages for an unknown config option span several lines and end in a traceback hint;
``guard_overrides`` checks group choices (``codec=nosuch``) and group keys (``codec.qualty=5``)
before Hydra starts, and ``report_errors`` turns a :class:`SplitbenchError` raised inside a job
into ``splitbench: error: <message>``, exit status 2, with the job's partial output removed.
"""
from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import SplitbenchError
from .paths import CONF_DIR

EXIT_USAGE = 2


def fail(message: str) -> None:
    print(f"splitbench: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "hydra")))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _defaults(config_name: str) -> dict[str, str]:
    data = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()) or {}
    out = {}
    for item in data.get("defaults", []):
        if isinstance(item, dict):
            for k, v in item.items():
                out[k.split("@")[0].replace("override ", "").strip()] = v
    return out


PLURAL = {"codec": "codecs", "bandwidth": "bandwidth presets", "data": "datasets", "model": "models",
          "device": "device profiles", "server": "server profiles"}


def guard_overrides(args: list[str], config_name: str = "config") -> None:
    """Reject unknown group choices and unknown group keys with one line; leave the rest to Hydra."""
    groups = _groups()
    choices = dict(_defaults(config_name))
    plain = [a for a in args if "=" in a and not a.startswith("-")]
    for arg in plain:
        key, _, value = arg.partition("=")
        key = key.lstrip("+")
        if key in groups:
            if "(" in value or value in ("null", ""):  # sweep functions (range, choice...) or unset
                continue
            valid = _options(key)
            for v in value.split(","):
                if v not in valid:
                    extra = "; or set bandwidth.mbps=X (and bandwidth.rtt_ms=Y)" if key == "bandwidth" else ""
                    fail(f"unknown {key} {v!r}; valid {PLURAL.get(key, key + ' options')}: "
                         f"{', '.join(valid)}{extra}")
            choices[key] = value.split(",")
    for arg in plain:
        key, _, _ = arg.partition("=")
        if key.startswith("+") or "." not in key:
            continue
        group, sub = key.split(".", 1)
        if group not in groups:
            continue
        selected = choices.get(group)
        for choice in (selected if isinstance(selected, list) else [selected]):
            if choice in (None, "null"):
                fail(f"{key} is set but no {group} is selected; add {group}=<one of "
                     f"{', '.join(_options(group))}>")
            conf = yaml.safe_load((CONF_DIR / group / f"{choice}.yaml").read_text()) or {}
            node: Any = conf
            for part in sub.split("."):
                if not isinstance(node, dict) or part not in node:
                    valid = ", ".join(f"{group}.{k}" for k in sorted(conf) if k != "name")
                    fail(f"{group} {choice!r} has no option {key!r}; valid options: {valid} "
                         f"(prefix with + to add a new key)")
                node = node[part]


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
