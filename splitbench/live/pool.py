"""A bounded pool of compute workers (splitbench.live.worker) that the asyncio server can kill.

Design, and why:

* **A few workers, not one per connection.** Each worker holds torch, the task model and its codecs
  (~0.3-0.9 GB RSS, mostly libraries shared with its siblings), so the pool is small and fixed
  (``size``, default 2: one stuck sample never stalls every client). Any worker serves any session;
  a worker that already built a session's codec is preferred, others build it on first use.
* **Fork server, preloaded.** Workers come from a ``forkserver`` that has imported torch, compressai
  and the codecs once, so a replacement after a kill is a fork plus a model load (well under a second
  for the shipped ViT) instead of a fresh interpreter, and forking never happens from the threaded
  server process itself.
* **Deadlines, then SIGKILL.** Every request has a deadline (``decode_timeout_s``; plus
  ``build_timeout_s`` when that worker has yet to build the codec). Past it the worker is SIGKILLed
  (a C++ loop holding the GIL ignores everything else) and replaced in the background; the request
  gets :class:`WorkerTimeout`. A worker whose RSS passes ``max_rss_bytes`` after a request is
  recycled the same way, so a leak or an amplifying decoder cannot grow the server without bound.
* **Shutdown kills.** ``aclose`` SIGKILLs every worker, so SIGTERM ends the server within seconds
  even while a worker is stuck.
* **GPUs and the fork server.** CUDA cannot be used in a child forked from a process that has
  initialised it. The fork server is a fresh interpreter (started by fork + exec, never forked from
  this server) and its preload only *imports* torch, compressai and the codecs, which initialises
  no CUDA (tests/test_runtime.py checks it), so every worker initialises CUDA itself after its fork
  and runs the server half (task model + the codec's networks) on ``device``; entropy decoding stays
  on the CPU by the codec protocol. Each worker then holds its own CUDA context (~0.5 GB of GPU
  memory). A worker that finds CUDA poisoned anyway says so and the pool refuses to start.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..errors import SplitbenchError

log = logging.getLogger("splitbench.live.pool")
PRELOAD = ["splitbench.live.worker"]


def codec_key(name: str, options: dict[str, Any]) -> str:
    """Identity of a codec session: the same name + options build the same codec in any worker."""
    return json.dumps([name, options], sort_keys=True)


class WorkerTimeout(SplitbenchError):
    """A request passed its deadline; its worker was killed and is being replaced."""


class RequestRejected(SplitbenchError):
    """The codec refused the request (bad payload, bad options): the client's fault."""


class WorkerFailed(SplitbenchError):
    """A worker crashed or raised an unexpected error on this request."""


@dataclass
class PoolSettings:
    size: int = 2                      # worker processes
    threads: int = 1                   # torch threads per worker
    decode_timeout_s: float = 5.0      # one DATA request: decode + server half
    build_timeout_s: float = 60.0      # building a codec (OPEN, or a worker's first use of a session)
    start_timeout_s: float = 300.0     # a worker loading the task model
    queue_timeout_s: float = 30.0      # waiting for a free worker
    max_rss_bytes: int = 4 << 30       # a worker above this after a request is replaced
    imports: list[str] = field(default_factory=list)  # extra modules (e.g. plugin codecs) in every worker
    device: str = "cpu"                # where workers run the server half (runtime.device, resolved)


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    built: set[str] = field(default_factory=set)
    busy: bool = False


class WorkerPool:
    """Workers for one task model; ``info`` (name, fingerprint, input size) is set by ``start``."""

    def __init__(self, model_cfg: dict[str, Any], settings: PoolSettings | None = None) -> None:
        self.model_cfg = model_cfg
        self.settings = settings or PoolSettings()
        self.info: dict[str, Any] = {}
        self.kills = 0
        self.recycled = 0
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._workers: list[_Worker] = []
        self._free = asyncio.Event()
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Start ``size`` workers and wait until each has loaded the model; raise if one cannot."""
        spawned = [self._spawn() for _ in range(self.settings.size)]
        try:
            infos = await asyncio.gather(*(self._ready(w) for w in spawned))
        except BaseException:
            for w in spawned:
                self._kill(w)
            raise
        self.info = infos[0]
        self._workers = spawned
        for w in spawned:
            w.busy = False
        self._free.set()
        return self.info

    async def aclose(self) -> None:
        """Kill every worker now (a stuck one would never answer a polite request)."""
        self._closed = True
        for task in list(self._replacing):
            task.cancel()
        for w in self._workers:
            self._kill(w)
        self._workers = []
        await asyncio.gather(*self._replacing, return_exceptions=True)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    # -- requests ----------------------------------------------------------------------------
    async def open(self, key: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Check and build a codec in a worker; returns its description and max_payload_bytes."""
        value, _ = await self._call(key, ("open", name, options, b""), self.settings.build_timeout_s, "opening")
        return value

    async def infer(self, key: str, name: str, options: dict[str, Any], data: bytes) -> tuple[int, float, float]:
        value, _ = await self._call(key, ("infer", name, options, data), self.settings.decode_timeout_s, "decoding")
        return value

    async def _call(self, key: str, message: tuple[Any, ...], timeout: float, what: str) -> tuple[Any, _Worker]:
        w = await self._acquire(key)
        deadline = timeout + (self.settings.build_timeout_s if key not in w.built and what == "decoding" else 0)
        loop = asyncio.get_running_loop()
        try:
            if len(message[3]) > 1 << 18:  # a large payload: do not block the event loop on the pipe
                await loop.run_in_executor(None, w.conn.send, message)
            else:
                w.conn.send(message)
            status, value, rss = await asyncio.wait_for(self._recv(w), deadline)
        except asyncio.TimeoutError:
            self.kills += 1
            self._replace(w)
            raise WorkerTimeout(f"{what} did not finish within {deadline:g} s; the worker was stopped and "
                                f"replaced") from None
        except (EOFError, OSError) as err:
            self._replace(w)
            raise WorkerFailed(f"the worker {what} this request died ({type(err).__name__})") from None
        except BaseException:  # cancelled (client gone, shutdown): the worker's state is unknown
            self._replace(w)
            raise
        if status == "ok":
            w.built.add(key)
        if rss > self.settings.max_rss_bytes:
            self.recycled += 1
            log.warning("worker %s uses %.0f MiB (> max %.0f MiB): replacing it", w.proc.pid, rss / 2**20,
                        self.settings.max_rss_bytes / 2**20)
            self._replace(w)
        else:
            self._release(w)
        if status == "rejected":
            raise RequestRejected(value)
        if status != "ok":
            raise WorkerFailed(value)
        return value, w

    async def _acquire(self, key: str) -> _Worker:
        end = time.monotonic() + self.settings.queue_timeout_s
        while True:
            if self._closed:
                raise WorkerFailed("the server is shutting down")
            idle = [w for w in self._workers if not w.busy]
            if idle:
                w = next((w for w in idle if key in w.built), idle[0])
                w.busy = True
                return w
            self._free.clear()
            left = end - time.monotonic()
            if left <= 0:
                raise WorkerFailed(f"all {self.settings.size} compute workers stayed busy for "
                                   f"{self.settings.queue_timeout_s:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._free.wait(), left)

    def _release(self, w: _Worker) -> None:
        w.busy = False
        self._free.set()

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_entry, name="splitbench-worker", daemon=True,
                                 args=(child, self.model_cfg, self.settings.threads, list(self.settings.imports),
                                       self.settings.device))
        proc.start()
        child.close()
        return _Worker(proc, parent, busy=True)

    async def _ready(self, w: _Worker) -> dict[str, Any]:
        try:
            msg = await asyncio.wait_for(self._recv(w), self.settings.start_timeout_s)
        except asyncio.TimeoutError:
            raise SplitbenchError(f"a compute worker did not load the model within "
                                  f"{self.settings.start_timeout_s:g} s") from None
        except (EOFError, OSError):
            raise SplitbenchError(f"a compute worker exited while starting (exit code {w.proc.exitcode})") from None
        if msg[0] != "ready":
            raise SplitbenchError(f"a compute worker could not start: {msg[1]}")
        return msg[1]

    async def _recv(self, w: _Worker) -> Any:
        """One message from a worker without blocking the event loop (the fd is watched)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        fd = w.conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            if fut.done():
                return
            try:
                fut.set_result(w.conn.recv())
            except BaseException as err:  # EOF: the worker died
                fut.set_exception(err)

        loop.add_reader(fd, readable)
        try:
            return await fut
        finally:
            loop.remove_reader(fd)

    def _kill(self, w: _Worker) -> None:
        with contextlib.suppress(Exception):
            w.proc.kill()
        with contextlib.suppress(Exception):
            w.conn.close()

    def _replace(self, w: _Worker) -> None:
        """Kill ``w`` and start a replacement in the background (the pool keeps its size)."""
        self._kill(w)
        if w in self._workers:
            self._workers.remove(w)
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._respawn())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)
        asyncio.get_running_loop().run_in_executor(None, w.proc.join, 5)  # reap it off the event loop

    async def _respawn(self) -> None:
        for attempt in range(5):
            w = self._spawn()
            try:
                await self._ready(w)
            except asyncio.CancelledError:
                self._kill(w)
                raise
            except SplitbenchError as err:
                self._kill(w)
                log.error("replacing a compute worker failed (attempt %d): %s", attempt + 1, err)
                await asyncio.sleep(1.0)
                continue
            if self._closed:
                self._kill(w)
                return
            self._workers.append(w)
            self._release(w)
            return


def _worker_entry(*args: Any) -> None:
    """Process target: imports the heavy worker module only in the child, keeping the server light."""
    from .worker import worker_main

    worker_main(*args)


__all__ = ["codec_key", "WorkerPool", "PoolSettings", "WorkerTimeout", "RequestRejected", "WorkerFailed"]
