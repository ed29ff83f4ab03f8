"""Where things live: the shipped configs, checkpoints and vendored data, and the cache.

The shipped files sit at the top level of a source checkout (``conf/``, ``checkpoints/``,
``data/fashion-mnist/``). A non-editable install copies them into the package as
``splitbench/_shipped/<same path>`` (see ``setup.py``), so one rule finds them either way: the
installed copy if it exists, else the checkout. Nothing is ever written there: runs write under
the current directory (``results/``) and into the cache.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: the checkout this package was imported from (meaningful only when running from source)
REPO_ROOT = PACKAGE_DIR.parent
INSTALLED_DIR = PACKAGE_DIR / "_shipped"
SHIPPED_ROOT = INSTALLED_DIR if (INSTALLED_DIR / "conf").is_dir() else REPO_ROOT
CONF_DIR = SHIPPED_ROOT / "conf"
CHECKPOINT_DIR = SHIPPED_ROOT / "checkpoints"
FASHION_MNIST_DIR = SHIPPED_ROOT / "data" / "fashion-mnist"


def running_from_source() -> bool:
    """True when the shipped files are read from a checkout (editable install or none)."""
    return SHIPPED_ROOT == REPO_ROOT


def child_env() -> dict[str, str]:
    """Environment for a ``python -m splitbench`` child: it imports this same copy from any cwd."""
    env = dict(os.environ)
    if running_from_source():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def cache_dir() -> Path:
    """``$SPLITBENCH_CACHE`` or ``~/.cache/splitbench``: unpacked data and measured records."""
    path = Path(os.environ.get("SPLITBENCH_CACHE", Path.home() / ".cache" / "splitbench"))
    path.mkdir(parents=True, exist_ok=True)
    return path
