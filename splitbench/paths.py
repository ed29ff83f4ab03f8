"""Where things live: the repository (configs, vendored data, shipped checkpoints) and the cache."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"


def cache_dir() -> Path:
    """``$SPLITBENCH_CACHE`` or ``~/.cache/splitbench``: unpacked data and measured records."""
    path = Path(os.environ.get("SPLITBENCH_CACHE", Path.home() / ".cache" / "splitbench"))
    path.mkdir(parents=True, exist_ok=True)
    return path
