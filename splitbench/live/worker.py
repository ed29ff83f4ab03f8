"""The edge server's compute worker: a child process that builds codecs and decodes payloads.

Why a process and not a thread: a damaged payload can make a C++ entropy decoder loop forever while
holding the GIL; in a thread that freezes the whole server, and neither ``signal.alarm`` nor SIGTERM
can interrupt it. In a child process the server (splitbench.live.pool) simply SIGKILLs it when a
request passes its deadline and starts a replacement; every other client is served meanwhile.

The pipe carries only messages the server itself builds: ``(op, codec name, options, payload)`` with
``op`` in {"open", "infer"}, options already parsed from JSON, the payload as a ``bytes`` object.
Client bytes are never unpickled as code, they only travel inside a ``bytes``. Replies are
``("ready", info)`` once at start, then ``(status, value, rss_bytes)`` per request with status
"ok", "rejected" (a PayloadError/ConfigError: the client's fault) or "internal".
"""
from __future__ import annotations

import ctypes
import importlib
import signal
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any, Callable

import torch

import baselines  # noqa: F401  (registers the built-in codecs; preloaded once by the fork server)
from ..codecs import CODECS, Codec, create_codec
from ..errors import SplitbenchError
from ..models import build_model
from ..models import efficientnet, vit, vit_edge  # noqa: F401  (register the built-in models)
from ..runtime import prepare, synchronizer
from .options import check_client_options
from .pool import codec_key

CODEC_CACHE = 16  # built codecs kept per worker (LRU): memory stays bounded whatever clients open


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker if its parent goes away, even while it is stuck in C code."""
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def worker_main(conn: Connection, model_cfg: dict[str, Any], threads: int, imports: list[str],
                device: str = "cpu") -> None:
    """Entry point of one worker process: load the task model once (on ``device``: the server half
    runs there, decoding on the CPU), then serve requests until EOF."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group; the server stops us
    try:
        torch.set_num_threads(threads)
        if torch.device(device).type == "cuda" and torch.cuda._is_in_bad_fork():
            raise RuntimeError("CUDA was initialised in the fork server before this worker was forked; "
                               "run the server with --device cpu")
        prepare(device)
        for module in imports:
            importlib.import_module(module)
        task = build_model(model_cfg).to(device)
    except BaseException as err:  # reported to the server, which says why it cannot start
        conn.send(("failed", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", {"name": task.name, "fingerprint": task.fingerprint,
                         "input_size": list(task.input_size), "device": str(device)}))
    sync = synchronizer(device)
    codecs: OrderedDict[str, Codec] = OrderedDict()
    while True:
        try:
            op, name, options, data = conn.recv()
        except (EOFError, OSError):
            return
        try:
            codec = _codec(codecs, task, name, options)
            if op == "open":
                value: Any = {"codec": codec.name, "rate_point": codec.rate_point(),
                              "max_payload_bytes": int(codec.max_payload_bytes())}
            else:
                value = infer(codec, data, sync)
            reply = ("ok", value)
        except SplitbenchError as err:
            reply = ("rejected", str(err))
        except Exception as err:  # noqa: BLE001  (a codec bug must not end the worker)
            reply = ("internal", f"{type(err).__name__}: {err}")
        conn.send((*reply, rss_bytes()))


def _codec(cache: OrderedDict[str, Codec], task: Any, name: str, options: dict[str, Any]) -> Codec:
    key = codec_key(name, options)
    codec = cache.get(key)
    if codec is None:
        check_client_options(CODECS.get(name), options)  # before anything is built
        codec = create_codec(name, for_model=task.name, **options)
        codec.bind(task)
        cache[key] = codec
        while len(cache) > CODEC_CACHE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return codec


def infer(codec: Codec, data: bytes, sync: Callable[[], None] = lambda: None) -> tuple[int, float, float]:
    """Decode one payload (CPU) and run the server half (the codec's device; ``sync`` waits for its
    kernels before the clock is read); returns (top-1, decode s, server s)."""
    from ..errors import PayloadError

    if not data:
        raise PayloadError("empty payload (a sample answered on the device sends no frame)")
    with torch.inference_mode():
        t0 = time.perf_counter()
        features = codec.decode([data])
        t1 = time.perf_counter()
        logits = codec.server_forward(features)
        sync()
        t2 = time.perf_counter()
    return int(logits[0].argmax()), t1 - t0, t2 - t1


__all__ = ["worker_main", "infer"]
