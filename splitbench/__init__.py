"""splitbench: codecs for split computing / device-edge co-inference, compared on one footing.

The public names below load on first use (PEP 562), so the torch-free parts (``splitbench.latency``,
``splitbench.channel``, ``splitbench.compute``, the CLI guards) import without torch.
"""
from __future__ import annotations

import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any

# compressai scripts a few helpers with torch.jit.script, which torch >= 2.10 flags on every import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from .errors import CheckpointError, ConfigError, DataError, PayloadError, SplitbenchError  # noqa: E402

__version__ = "0.1.0"

_LAZY = {name: ".codecs" for name in ("Codec", "Payload", "create_codec", "list_codecs", "register_codec")}

__all__ = [
    "Codec", "Payload", "create_codec", "list_codecs", "register_codec",
    "SplitbenchError", "ConfigError", "DataError", "CheckpointError", "PayloadError", "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from .codecs import Codec, Payload, create_codec, list_codecs, register_codec  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
