"""Hub weights without the wait: go offline at once when the model hub cannot be reached.

``timm.create_model(..., pretrained=True)`` retries an unreachable hub for ~50 s before it fails.
splitbench first checks, in a bounded time, whether the hub's host answers a TCP connect; when it
does not, timm runs in huggingface_hub's offline mode, so weights already in the local cache still
load and missing ones fail in seconds with the one-line error the caller words.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from typing import Iterator
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the Hugging Face hub's host accepts a TCP connection within ``timeout`` seconds."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return False
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="splitbench-hub-probe")
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Run the body in huggingface_hub's offline mode when the hub is unreachable; yields reachability."""
    from huggingface_hub import constants

    reachable = hub_reachable()
    saved = constants.HF_HUB_OFFLINE
    if not reachable:
        constants.HF_HUB_OFFLINE = True
    try:
        yield reachable
    finally:
        constants.HF_HUB_OFFLINE = saved
