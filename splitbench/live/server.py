"""The edge server: an asyncio TCP server hosting the server halves of the registered codecs.

A client opens a codec session (OPEN: codec name + JSON options), then sends one DATA frame per
sample; the server decodes the real bytes, runs the codec's server half on its task model and
answers with the top-1 class and its stage times.

What it defends against (the server faces the network; issue #11):

* **Stuck or runaway decoders.** Codecs are built and payloads decoded only in a small pool of
  worker processes (splitbench.live.pool) with a per-request deadline; past it the worker is
  SIGKILLed and replaced, that sample gets an ERROR, and the event loop here, which holds no model
  and runs no codec code, keeps serving every other client. SIGTERM kills the workers and exits.
* **Memory.** Every frame is bounds-checked from its header before its body is read: JSON bodies
  at most 64 KiB and 16 levels deep, DATA at most the session codec's ``max_payload_bytes()`` (and
  the global ``max_frame_bytes``). A DATA frame over its codec's bound is read off the socket in
  small chunks and dropped, never buffered, and gets an ERROR for that sample only.
* **Options.** OPEN options are checked in the worker against the codec's declared
  ``client_options`` before anything is built (splitbench.live.options): no checkpoint paths,
  architecture or training knobs from the network.
* **Connections.** At most ``max_clients`` connections, ``max_per_client`` of them from one address;
  a connection must open a codec session within ``open_timeout_s`` (a SINK/STATS-only connection
  must send a frame at least that often), after that it may idle for ``idle_timeout_s``; a started
  frame must progress within ``read_timeout_s``.

A malformed, truncated or oversized frame gets an ERROR flagged "closing" and only that connection
ends; a payload the codec rejects or that times out gets an ERROR for that sample and the connection
stays open. Error texts name the codec, the sample and the reason, never an address.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import SplitbenchError
from .pool import PoolSettings, RequestRejected, WorkerFailed, WorkerPool, WorkerTimeout, codec_key
from .protocol import (CLIENT_TYPES, DEFAULT_MAX_FRAME, FLAG_CLOSING, HEADER_SIZE, FrameType, Header,
                       ProtocolError, Result, json_body, pack_frame, pack_result, parse_header, parse_json)

log = logging.getLogger("splitbench.live.server")
OPEN_KEYS = {"codec", "options", "model", "model_fingerprint", "rtt_ms"}
READ_CHUNK = 1 << 20
DRAIN_CHUNK = 1 << 16
_OBJECT_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<_io.BytesIO object at 0x7f..>" in library messages


@dataclass
class ServerLimits:
    """Bounds on what one client can make the server hold or wait for."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME
    read_timeout_s: float = 30.0       # a started frame (or a reply write) must progress within this
    idle_timeout_s: float = 300.0      # silence allowed between two frames once a session is open
    open_timeout_s: float = 10.0       # silence allowed between frames while no session is open
    max_clients: int = 64              # connections served at once; more get "busy" and are closed
    max_per_client: int = 16           # connections served at once from one address
    max_sessions: int = 8              # open codec sessions per connection
    max_rtt_ms: float = 10_000.0       # largest emulated round-trip delay a client may ask for


@dataclass
class _Session:
    name: str
    options: dict[str, Any]
    key: str
    max_payload: int
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
    decode_timeouts: int = 0
    oversized_payloads: int = 0
    internal_errors: int = 0
    bytes_in: int = 0
    started: float = field(default_factory=time.time)


def rss_of(pid: int | str) -> int | None:
    """Resident set size of a local process (Linux /proc), None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (Linux), else the peak from getrusage."""
    rss = rss_of("self")
    if rss is not None:
        return rss
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Skipped(Exception):
    """A frame whose body was read off the socket and dropped; the client gets ``message``."""

    def __init__(self, header: Header, message: str) -> None:
        super().__init__(message)
        self.header = header


class EdgeServer:
    """Serve codec sessions for one task model config (``None``: a SINK-only server for link tests).

    ``model_cfg`` is what ``splitbench.models.build_model`` takes; each compute worker loads it.
    """

    def __init__(self, model_cfg: dict[str, Any] | None, limits: ServerLimits | None = None,
                 pool: PoolSettings | None = None) -> None:
        self.limits = limits or ServerLimits()
        self.stats = ServerStats()
        self.pool = WorkerPool(model_cfg, pool) if model_cfg is not None else None
        self.model: dict[str, Any] | None = None  # name, fingerprint, input_size once started
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._per_client: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Start the workers (model loaded), then listen (on ``sock`` if given, e.g. in a namespace)."""
        if self.pool is not None:
            self.model = await self.pool.start()
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
        if self.pool is not None:
            await self.pool.aclose()  # first: a stuck worker must not hold up the shutdown
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        pids = self.pool.pids() if self.pool else []
        return {**s.__dict__, "rss_bytes": rss_bytes(), "worker_pids": pids,
                "workers_rss_bytes": sum(rss_of(p) or 0 for p in pids),
                "workers_killed": self.pool.kills if self.pool else 0,
                "workers_recycled": self.pool.recycled if self.pool else 0,
                "model": self.model["name"] if self.model else None, "version": __version__}

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
        client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
        self.stats.connections_total += 1
        try:
            busy = self._busy_reason(client)
            if busy:
                self.stats.rejected_busy += 1
                await self._error(writer, busy, closing=True)
                return
            self.stats.connections_open += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
            try:
                await self._serve_connection(reader, writer, peer)
            finally:
                self.stats.connections_open -= 1
                self._per_client[client] -= 1
                if not self._per_client[client]:
                    del self._per_client[client]
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

    def _busy_reason(self, client: str) -> str | None:
        lim = self.limits
        if self.stats.connections_open >= lim.max_clients:
            return f"server busy: {lim.max_clients} clients connected (max_clients)"
        if self._per_client.get(client, 0) >= lim.max_per_client:
            return f"server busy: {lim.max_per_client} connections from your address already (max_per_client)"
        return None

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                peer: Any) -> None:
        sessions: dict[int, _Session] = {}
        while True:
            try:
                header, body, t_first, t_last = await self._read_frame(reader, sessions)
            except _CleanEOF:
                return
            except _Skipped as skip:
                self.stats.frames += 1
                self.stats.payload_errors += 1
                await self._error(writer, str(skip), sample_id=skip.header.sample_id,
                                  codec_id=skip.header.codec_id)
                continue
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
            except WorkerTimeout as err:
                self.stats.decode_timeouts += 1
                await self._error(writer, self._about(header, sessions, str(err)), sample_id=header.sample_id,
                                  codec_id=header.codec_id)
                continue
            except WorkerFailed as err:
                self.stats.internal_errors += 1
                log.warning("request %s failed in a worker: %s", header, err)
                await self._error(writer, self._about(header, sessions, f"server error: {err}"),
                                  sample_id=header.sample_id, codec_id=header.codec_id)
                continue
            except SplitbenchError as err:  # the request is understood but cannot be served
                self.stats.payload_errors += 1
                await self._error(writer, self._about(header, sessions, str(err)), sample_id=header.sample_id,
                                  codec_id=header.codec_id)
                continue
            except Exception as err:
                self.stats.internal_errors += 1
                log.exception("request %s from %s failed", header, peer)
                await self._error(writer, self._about(header, sessions, f"server error: {type(err).__name__}"),
                                  sample_id=header.sample_id)
                continue
            await self._write(writer, reply)

    @staticmethod
    def _about(header: Header, sessions: dict[int, _Session], reason: str) -> str:
        """An error text naming the codec and the sample (never an address)."""
        if header.type == FrameType.DATA and header.codec_id in sessions:
            return f"{sessions[header.codec_id].name} sample {header.sample_id}: {reason}"
        return f"{header.type.name} (codec id {header.codec_id}): {reason}"

    async def _read_frame(self, reader: asyncio.StreamReader,
                          sessions: dict[int, _Session]) -> tuple[Header, bytes, int, int]:
        lim = self.limits
        wait, which = (lim.idle_timeout_s, "idle_timeout_s") if sessions else (lim.open_timeout_s, "open_timeout_s")
        try:
            first = await asyncio.wait_for(reader.readexactly(1), wait)
        except asyncio.IncompleteReadError:
            raise _CleanEOF() from None
        except asyncio.TimeoutError:
            what = "idle" if sessions else "no codec session opened and no frame"
            raise asyncio.TimeoutError(f"{what} for {wait:g} s ({which})") from None
        t_first = time.monotonic_ns()
        rest = await self._read_exactly(reader, HEADER_SIZE - 1, "header", already=1)
        header = parse_header(first + rest, lim.max_frame_bytes, allowed=CLIENT_TYPES)
        if header.type == FrameType.DATA:
            session = sessions.get(header.codec_id)
            reason = None
            if session is None:
                reason = (f"DATA sample {header.sample_id}: codec id {header.codec_id} is not open on this "
                          f"connection; send OPEN first (open ids: {sorted(sessions) or 'none'})")
            elif header.length > session.max_payload:
                self.stats.oversized_payloads += 1
                reason = (f"{session.name} sample {header.sample_id}: payload of {header.length} bytes exceeds "
                          f"this codec's maximum of {session.max_payload} bytes (max_payload_bytes); dropped "
                          f"unread")
            if reason is not None:
                await self._drain(reader, header.length)
                raise _Skipped(header, reason)
        body = await self._read_exactly(reader, header.length, f"{header.type.name} body")
        return header, body, t_first, time.monotonic_ns()

    async def _drain(self, reader: asyncio.StreamReader, n: int) -> None:
        """Read ``n`` bytes and drop them in small chunks: the connection stays in step, memory flat."""
        left = n
        while left:
            try:
                chunk = await asyncio.wait_for(reader.read(min(left, DRAIN_CHUNK)), self.limits.read_timeout_s)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(f"read timeout: a dropped body stalled for "
                                           f"{self.limits.read_timeout_s:g} s (read_timeout_s)") from None
            if not chunk:
                raise ProtocolError(f"truncated frame: connection closed after {n - left} of {n} body bytes")
            left -= len(chunk)

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
        message = _OBJECT_ADDRESS.sub("", message)  # error texts never carry an address
        frame = pack_frame(FrameType.ERROR, message.encode("utf-8", "replace")[:4096], sample_id=sample_id,
                           codec_id=codec_id, flags=FLAG_CLOSING if closing else 0)
        with contextlib.suppress(Exception):
            await self._write(writer, frame)

    # -- requests ----------------------------------------------------------------------------
    async def _dispatch(self, header: Header, body: bytes, sessions: dict[int, _Session],
                        t_first: int, t_last: int) -> bytes:
        if header.type == FrameType.SINK:
            return pack_frame(FrameType.SUNK, pack_result(Result(-1, 0.0, 0.0, t_first, t_last)),
                              sample_id=header.sample_id)
        if header.type == FrameType.STATS:
            return pack_frame(FrameType.STATS_REPLY, json_body(self.snapshot()), sample_id=header.sample_id)
        if header.type == FrameType.OPEN:
            request = self._check_open(parse_json(body, "OPEN"), header, sessions)
            assert self.pool is not None and self.model is not None
            name, options = request["codec"], request.get("options") or {}
            key = codec_key(name, options)
            try:
                info = await self.pool.open(key, name, options)
            except (RequestRejected, WorkerTimeout, WorkerFailed) as err:
                raise type(err)(f"cannot open codec {name!r}: {err}") from None
            sessions[header.codec_id] = _Session(name, options, key, info["max_payload_bytes"],
                                                 float(request.get("rtt_ms") or 0.0) / 1e3)
            reply = {"codec": info["codec"], "rate_point": info["rate_point"], "model": self.model["name"],
                     "model_fingerprint": self.model["fingerprint"], "server_version": __version__,
                     "max_payload_bytes": info["max_payload_bytes"]}
            return pack_frame(FrameType.OPENED, json_body(reply), codec_id=header.codec_id)
        # DATA: _read_frame checked that the session exists and the body fits its codec
        session = sessions[header.codec_id]
        assert self.pool is not None
        pred, t_dec, t_srv = await self.pool.infer(session.key, session.name, session.options, body)
        self.stats.results += 1
        if session.rtt_s:
            await asyncio.sleep(session.rtt_s)  # emulated propagation delay (netem is not available)
        return pack_frame(FrameType.RESULT, pack_result(Result(pred, t_dec, t_srv, t_first, t_last)),
                          codec_id=header.codec_id, sample_id=header.sample_id)

    def _check_open(self, request: dict[str, Any], header: Header, sessions: dict[int, _Session]) -> dict[str, Any]:
        unknown = set(request) - OPEN_KEYS
        if unknown:
            raise ProtocolError(f"OPEN has unknown key(s) {', '.join(sorted(unknown))[:200]}; valid: "
                                f"{', '.join(sorted(OPEN_KEYS))}")
        if not isinstance(request.get("codec"), str) or len(request["codec"]) > 64:
            raise ProtocolError("OPEN needs \"codec\": a registered codec name")
        if not isinstance(request.get("options", {}) or {}, dict):
            raise ProtocolError("OPEN \"options\" must be a JSON object")
        rtt = request.get("rtt_ms", 0) or 0
        if isinstance(rtt, bool) or not isinstance(rtt, (int, float)) or not math.isfinite(rtt) \
                or not 0 <= rtt <= self.limits.max_rtt_ms:
            raise ProtocolError(f"OPEN rtt_ms must be a number in [0, {self.limits.max_rtt_ms:g}], got {rtt!r}"[:300])
        if self.model is None:
            raise SplitbenchError("this server hosts no model (started with --model none): SINK frames only")
        name, fp = self.model["name"], self.model["fingerprint"]
        model, client_fp = request.get("model"), request.get("model_fingerprint")
        if model is not None and model != name:
            raise SplitbenchError(f"this server hosts model {name!r}, the client uses {str(model)[:64]!r}; "
                                  f"start the server with the client's model")
        if client_fp is not None and client_fp != fp:
            raise SplitbenchError(f"model {name!r} on the server has weights {fp[:12]}, "
                                  f"the client's have {str(client_fp)[:12]}; use the same checkpoint on both ends")
        if header.codec_id in sessions:
            raise SplitbenchError(f"codec id {header.codec_id} is already open on this connection")
        if len(sessions) >= self.limits.max_sessions:
            raise SplitbenchError(f"at most {self.limits.max_sessions} codec sessions per connection (max_sessions)")
        return request


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

    def start(self, timeout: float = 300.0) -> "ServerThread":
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


__all__ = ["EdgeServer", "ServerLimits", "ServerThread", "ServerStats", "rss_bytes", "rss_of"]
