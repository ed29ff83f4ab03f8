"""The edge server: an asyncio TCP server hosting the server halves of the registered codecs.

A client opens a codec session (OPEN: codec name + JSON options, validated against the registry
exactly as ``create_codec`` validates a config), then sends one DATA frame per sample; the server
decodes the real bytes, runs the codec's server half on its task model and answers with the top-1
class and its stage times.

Robustness (the server faces the network): every frame is bounds-checked before its body is read;
a malformed, truncated or oversized frame gets an ERROR reply flagged "closing" and only that
connection ends. A well-formed DATA frame whose payload the codec rejects (PayloadError) gets an
ERROR for that sample and the connection stays open. A started frame must make progress within
``read_timeout_s``; a connection idle for ``idle_timeout_s`` is closed; at most ``max_clients``
connections are served at once. Model compute runs in one worker thread, so network I/O of other
clients goes on while a sample is being decoded, and memory stays bounded (codec cache is an LRU).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import __version__
from ..codecs import Codec, create_codec
from ..errors import PayloadError, SplitbenchError
from ..models import TaskModel
from .protocol import (CLIENT_TYPES, DEFAULT_MAX_FRAME, FLAG_CLOSING, HEADER_SIZE, FrameType, Header,
                       ProtocolError, Result, json_body, pack_frame, pack_result, parse_header, parse_json)

log = logging.getLogger("splitbench.live.server")
OPEN_KEYS = {"codec", "options", "model", "model_fingerprint", "rtt_ms"}
READ_CHUNK = 1 << 20


@dataclass
class ServerLimits:
    """Bounds on what one client can make the server hold or wait for."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME
    read_timeout_s: float = 30.0       # a started frame (or a reply write) must progress within this
    idle_timeout_s: float = 300.0      # silence allowed between two frames
    max_clients: int = 64              # connections served at once; more get "busy" and are closed
    max_sessions: int = 8              # open codec sessions per connection
    codec_cache: int = 16              # built codecs kept across connections (LRU)
    max_rtt_ms: float = 10_000.0       # largest emulated round-trip delay a client may ask for


@dataclass
class _Session:
    codec: Codec
    rtt_s: float


@dataclass
class ServerStats:
    connections_total: int = 0
    connections_open: int = 0
    rejected_busy: int = 0
    frames: int = 0
    results: int = 0
    payload_errors: int = 0
    protocol_errors: int = 0
    timeouts: int = 0
    internal_errors: int = 0
    bytes_in: int = 0
    started: float = field(default_factory=time.time)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux), else the peak from getrusage."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class EdgeServer:
    """Serve codec sessions for one task model (``task=None``: a SINK-only server for link tests)."""

    def __init__(self, task: TaskModel | None, limits: ServerLimits | None = None) -> None:
        self.task = task
        self.limits = limits or ServerLimits()
        self.stats = ServerStats()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="splitbench-compute")
        self._codecs: OrderedDict[str, Codec] = OrderedDict()
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen (on ``sock`` if given, e.g. one made inside a network namespace)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock)
        else:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        addr = self._server.sockets[0].getsockname()
        return addr[0], addr[1]

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        async with self._server:
            await self._server.serve_forever()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {**s.__dict__, "rss_bytes": rss_bytes(), "codecs_cached": len(self._codecs),
                "model": self.task.name if self.task else None, "version": __version__}

    # -- one connection ----------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        self.stats.connections_total += 1
        try:
            if self.stats.connections_open >= self.limits.max_clients:
                self.stats.rejected_busy += 1
                await self._error(writer, f"server busy: {self.limits.max_clients} clients connected "
                                          f"(max_clients)", closing=True)
                return
            self.stats.connections_open += 1
            try:
                await self._serve_connection(reader, writer, peer)
            finally:
                self.stats.connections_open -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return  # server shutdown: end quietly (a re-raised cancel makes asyncio.streams log a traceback)
        except Exception:  # never let one connection take the server down
            self.stats.internal_errors += 1
            log.exception("connection %s failed", peer)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                peer: Any) -> None:
        sessions: dict[int, _Session] = {}
        while True:
            try:
                header, body, t_first, t_last = await self._read_frame(reader)
            except _CleanEOF:
                return
            except asyncio.TimeoutError as err:
                self.stats.timeouts += 1
                await self._error(writer, str(err) or "read timeout", closing=True)
                return
            except ProtocolError as err:
                self.stats.protocol_errors += 1
                log.info("closing %s: %s", peer, err)
                await self._error(writer, str(err), closing=True)
                return
            self.stats.frames += 1
            self.stats.bytes_in += HEADER_SIZE + len(body)
            if header.type == FrameType.CLOSE:
                return
            try:
                reply = await self._dispatch(header, body, sessions, t_first, t_last)
            except ProtocolError as err:  # a well-framed request that breaks the protocol's rules
                self.stats.protocol_errors += 1
                await self._error(writer, str(err), closing=True, sample_id=header.sample_id)
                return
            except SplitbenchError as err:  # the request is understood but cannot be served
                self.stats.payload_errors += 1
                await self._error(writer, str(err), sample_id=header.sample_id, codec_id=header.codec_id)
                continue
            except Exception as err:
                self.stats.internal_errors += 1
                log.exception("request %s from %s failed", header, peer)
                await self._error(writer, f"server error on sample {header.sample_id}: "
                                          f"{type(err).__name__}: {err}", sample_id=header.sample_id)
                continue
            await self._write(writer, reply)

    async def _read_frame(self, reader: asyncio.StreamReader) -> tuple[Header, bytes, int, int]:
        lim = self.limits
        try:
            first = await asyncio.wait_for(reader.readexactly(1), lim.idle_timeout_s)
        except asyncio.IncompleteReadError:
            raise _CleanEOF() from None
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError(f"idle for {lim.idle_timeout_s:g} s (idle_timeout_s)") from None
        t_first = time.monotonic_ns()
        rest = await self._read_exactly(reader, HEADER_SIZE - 1, "header", already=1)
        header = parse_header(first + rest, lim.max_frame_bytes, allowed=CLIENT_TYPES)
        body = await self._read_exactly(reader, header.length, f"{header.type.name} body")
        return header, body, t_first, time.monotonic_ns()

    async def _read_exactly(self, reader: asyncio.StreamReader, n: int, what: str, already: int = 0) -> bytes:
        """``n`` bytes; each read must progress within read_timeout_s (a trickling peer is cut off
        only by max_clients and the idle limit, but holds one slot at most)."""
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = await asyncio.wait_for(reader.read(min(n - len(buf), READ_CHUNK)),
                                               self.limits.read_timeout_s)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(f"read timeout: {what} stalled at {already + len(buf)} of "
                                           f"{already + n} bytes for "
                                           f"{self.limits.read_timeout_s:g} s (read_timeout_s)") from None
            if not chunk:
                raise ProtocolError(f"truncated frame: connection closed in the {what} after "
                                    f"{already + len(buf)} of {already + n} bytes")
            buf += chunk
        return bytes(buf)

    async def _write(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        writer.write(frame)
        await asyncio.wait_for(writer.drain(), self.limits.read_timeout_s)

    async def _error(self, writer: asyncio.StreamWriter, message: str, *, closing: bool = False,
                     sample_id: int = 0, codec_id: int = 0) -> None:
        frame = pack_frame(FrameType.ERROR, message.encode("utf-8", "replace")[:4096], sample_id=sample_id,
                           codec_id=codec_id, flags=FLAG_CLOSING if closing else 0)
        with contextlib.suppress(Exception):
            await self._write(writer, frame)

    # -- requests ----------------------------------------------------------------------------
    async def _dispatch(self, header: Header, body: bytes, sessions: dict[int, _Session],
                        t_first: int, t_last: int) -> bytes:
        loop = asyncio.get_running_loop()
        if header.type == FrameType.SINK:
            return pack_frame(FrameType.SUNK, pack_result(Result(-1, 0.0, 0.0, t_first, t_last)),
                              sample_id=header.sample_id)
        if header.type == FrameType.STATS:
            return pack_frame(FrameType.STATS_REPLY, json_body(self.snapshot()), sample_id=header.sample_id)
        if header.type == FrameType.OPEN:
            request = self._check_open(parse_json(body, "OPEN"), header, sessions)
            codec = await loop.run_in_executor(self._pool, self._codec_for, request["codec"],
                                               request.get("options") or {})
            sessions[header.codec_id] = _Session(codec, float(request.get("rtt_ms") or 0.0) / 1e3)
            info = {"codec": codec.name, "rate_point": codec.rate_point(), "model": self.task.name,
                    "model_fingerprint": self.task.fingerprint, "server_version": __version__}
            return pack_frame(FrameType.OPENED, json_body(info), codec_id=header.codec_id)
        # DATA
        session = sessions.get(header.codec_id)
        if session is None:
            raise SplitbenchError(f"codec id {header.codec_id} is not open on this connection; send OPEN "
                                  f"first (open ids: {sorted(sessions) or 'none'})")
        pred, t_dec, t_srv = await loop.run_in_executor(self._pool, _infer, session.codec, body)
        self.stats.results += 1
        if session.rtt_s:
            await asyncio.sleep(session.rtt_s)  # emulated propagation delay (netem is not available)
        return pack_frame(FrameType.RESULT, pack_result(Result(pred, t_dec, t_srv, t_first, t_last)),
                          codec_id=header.codec_id, sample_id=header.sample_id)

    def _check_open(self, request: dict[str, Any], header: Header, sessions: dict[int, _Session]) -> dict[str, Any]:
        unknown = set(request) - OPEN_KEYS
        if unknown:
            raise ProtocolError(f"OPEN has unknown key(s) {', '.join(sorted(unknown))}; valid: "
                                f"{', '.join(sorted(OPEN_KEYS))}")
        if not isinstance(request.get("codec"), str):
            raise ProtocolError("OPEN needs \"codec\": a registered codec name")
        if not isinstance(request.get("options", {}) or {}, dict):
            raise ProtocolError("OPEN \"options\" must be a JSON object")
        rtt = request.get("rtt_ms", 0) or 0
        if isinstance(rtt, bool) or not isinstance(rtt, (int, float)) or not math.isfinite(rtt) \
                or not 0 <= rtt <= self.limits.max_rtt_ms:
            raise ProtocolError(f"OPEN rtt_ms must be a number in [0, {self.limits.max_rtt_ms:g}], got {rtt!r}")
        if self.task is None:
            raise SplitbenchError("this server hosts no model (started with --model none): SINK frames only")
        model, fp = request.get("model"), request.get("model_fingerprint")
        if model is not None and model != self.task.name:
            raise SplitbenchError(f"this server hosts model {self.task.name!r}, the client uses {model!r}; "
                                  f"start the server with the client's model")
        if fp is not None and fp != self.task.fingerprint:
            raise SplitbenchError(f"model {self.task.name!r} on the server has weights {self.task.fingerprint[:12]}, "
                                  f"the client's have {str(fp)[:12]}; use the same checkpoint on both ends")
        if header.codec_id in sessions:
            raise SplitbenchError(f"codec id {header.codec_id} is already open on this connection")
        if len(sessions) >= self.limits.max_sessions:
            raise SplitbenchError(f"at most {self.limits.max_sessions} codec sessions per connection (max_sessions)")
        return request

    def _codec_for(self, name: str, options: dict[str, Any]) -> Codec:
        """Built once per (name, options) and kept in a bounded LRU; runs in the compute thread."""
        key = json.dumps([name, options], sort_keys=True, default=str)
        codec = self._codecs.get(key)
        if codec is None:
            codec = create_codec(name, **options)  # ConfigError lists valid codecs / options
            codec.bind(self.task)
            self._codecs[key] = codec
            while len(self._codecs) > self.limits.codec_cache:
                self._codecs.popitem(last=False)
        self._codecs.move_to_end(key)
        return codec


def _infer(codec: Codec, data: bytes) -> tuple[int, float, float]:
    """Decode one payload and run the server half; returns (top-1, decode s, server s)."""
    if not data:
        raise PayloadError(f"{codec.name} payload is empty (a sample answered on the device sends no frame)")
    with torch.inference_mode():
        t0 = time.perf_counter()
        features = codec.decode([data])
        t1 = time.perf_counter()
        logits = codec.server_forward(features)
        t2 = time.perf_counter()
    return int(logits[0].argmax()), t1 - t0, t2 - t1


class _CleanEOF(Exception):
    """The peer closed between frames."""


class ServerThread:
    """An EdgeServer on its own event loop in a daemon thread (tests, validation, in-process use)."""

    def __init__(self, server: EdgeServer, host: str = "127.0.0.1", port: int = 0,
                 sock: socket.socket | None = None) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.address: tuple[str, int] = (host, port)
        self._thread = threading.Thread(target=self._main, args=(host, port, sock), daemon=True,
                                        name="splitbench-server")

    def _main(self, host: str, port: int, sock: socket.socket | None) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.address = self._loop.run_until_complete(self.server.start(host, port, sock))
        except BaseException as err:  # reported to start()
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_until_complete(self.server.serve_forever())
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.run_until_complete(self.server.aclose())
            self._loop.close()

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SplitbenchError("the live server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            def cancel() -> None:
                for t in asyncio.all_tasks(self._loop):
                    t.cancel()

            self._loop.call_soon_threadsafe(cancel)
            self._thread.join(10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def rss_of(pid: int) -> int | None:
    """RSS of another local process (the load test's spawned server), None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


__all__ = ["EdgeServer", "ServerLimits", "ServerThread", "ServerStats", "rss_bytes", "rss_of"]
