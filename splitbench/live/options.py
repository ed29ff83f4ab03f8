"""Which codec options a remote client may choose when it opens a session on the edge server.

Why a policy at all: ``create_codec`` trusts its caller (a config file on the user's own disk), but an
OPEN frame comes from the network. Passed through as they are, client options could point the server
at files on its own disk (``checkpoint``), make it build a network of any size before the weights
fail to fit (``arch``, ``N``, ``M``, ``channels``: a 74-byte OPEN once built 432 MiB), or reach
training-only knobs. The rule, local and declared per codec class:

* every option must fit its declaration (splitbench.options: kind, range, choices), the same check
  every construction gets;
* an option in the class's ``client_options`` (the rate point and other knobs that pick among
  shipped weights) may take any JSON scalar within :data:`MAX_NUMBER` / :data:`MAX_TEXT`; the
  server builds the codec in a worker it can kill;
* any other option is the server's: a client may leave it out or restate its declared default
  (which ``conf/codec/<name>.yaml`` restates and ``mode=live`` sends), nothing else. So a client can never build a different network than a shipped checkpoint.

All checks run before the codec is constructed.
"""
from __future__ import annotations

import json
import math
from typing import Any

from ..codecs.base import Codec, accepted_options, check_options
from ..errors import ConfigError
from ..options import declared, defaults

MAX_NUMBER = 1e6   # largest magnitude of a numeric option a client may send
MAX_TEXT = 128     # longest string option a client may send


def server_defaults(cls: type[Codec]) -> dict[str, Any]:
    """The value the server counts as its own for each option: the declared default (which
    ``conf/codec/<name>.yaml`` restates, tests/test_options.py holds them equal)."""
    return {key: _normal(value) for key, value in defaults(declared(cls.__init__)).items()}


def _normal(value: Any) -> Any:
    """The value as it looks after a JSON round trip (tuples become lists), for comparison."""
    return json.loads(json.dumps(value, default=str))


def _scalar_ok(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value) and abs(value) <= MAX_NUMBER
    return isinstance(value, str) and len(value) <= MAX_TEXT


def check_client_options(cls: type[Codec], options: dict[str, Any]) -> None:
    """Raise ConfigError naming the first option a remote client may not send; build nothing."""
    if not isinstance(options, dict) or set(options) - set(accepted_options(cls)):
        check_options(cls, options)  # not a mapping, or unknown keys: the usual one-line message
    free = cls.client_options
    own = server_defaults(cls)
    for key in sorted(options):
        value = options[key]
        if key in free:
            if not _scalar_ok(value):
                raise ConfigError(f"codec {cls.name!r}: option codec.{key} from a client must be a number "
                                  f"(|x| <= {MAX_NUMBER:g}), a string (<= {MAX_TEXT} chars), true/false or null; "
                                  f"got {type(value).__name__}")
        elif key not in own or _normal(value) != own[key]:
            settable = ", ".join(f"codec.{k}" for k in sorted(free)) or "(none)"
            raise ConfigError(f"codec {cls.name!r}: option codec.{key} is fixed by the edge server (architecture, "
                              f"training and checkpoint options would build or load something other than its "
                              f"shipped weights); a client may only set {settable}")
    check_options(cls, options)  # then each value against its declared kind, range or choices


__all__ = ["check_client_options", "server_defaults", "MAX_NUMBER", "MAX_TEXT"]
