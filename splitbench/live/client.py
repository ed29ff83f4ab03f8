"""The device side of live mode: a blocking TCP client that speaks splitbench.live.protocol.

Blocking sockets on purpose: a device sends one sample at a time and waits for the answer, and a
blocking ``sendall`` of header + payload in one buffer gives the kernel the whole frame at once
(the latency model assumes the frame is cut into MSS-sized segments, with no extra small segment
for a separately written header).
"""
from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..errors import SplitbenchError
from .protocol import (DEFAULT_MAX_FRAME, FLAG_CLOSING, FrameType, ProtocolError, RemoteError, Result,
                       json_body, pack_frame, parse_json, parse_result, recv_frame)

SEND_BUFFER = 4 * 1024 * 1024
PRIMER_ID = (1 << 64) - 1  # sample id of bucket-draining filler frames


class LiveError(SplitbenchError):
    """No server to talk to, or the connection broke."""


@dataclass(frozen=True)
class Timed:
    """A reply plus the client's clock: ``sent_ns`` before the first byte left, ``done_ns`` at the answer."""

    result: Result
    sent_ns: int
    done_ns: int

    @property
    def seconds(self) -> float:
        return (self.done_ns - self.sent_ns) / 1e9

    @property
    def uplink_seconds(self) -> float:
        """First byte sent -> last byte received by the server (same-host clocks only)."""
        return (self.result.recv_last_ns - self.sent_ns) / 1e9


class LiveClient:
    """One persistent connection to an edge server (``netns``: make the socket in that namespace)."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 60.0,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME, netns: str | None = None) -> None:
        self.host, self.port = host, int(port)
        self.timeout_s = float(timeout_s)
        self.max_frame_bytes = max_frame_bytes
        self.netns = netns
        self._sock: socket.socket | None = None
        self._next_codec_id = 1

    def connect(self) -> "LiveClient":
        from .shaping import netns

        where = netns(self.netns) if self.netns else contextlib.nullcontext()
        try:
            with where:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as err:
            raise LiveError(f"no splitbench server answers at {self.host}:{self.port} ({err.strerror or err}); "
                            f"start one with `python -m splitbench.serve --host {self.host} --port {self.port}` "
                            f"or run with live.spawn=true") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._sock = sock
        return self

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            raise LiveError("the client is not connected (call connect())")
        return self._sock

    def _exchange(self, frame: bytes, expect: FrameType, primer: int = 0) -> tuple[Any, bytes, int, int]:
        try:
            if primer:
                self.sock.sendall(pack_frame(FrameType.SINK, bytes(primer), sample_id=PRIMER_ID))
            sent = time.monotonic_ns()
            self.sock.sendall(frame)
            header, body = recv_frame(self.sock, self.max_frame_bytes)
            if primer and header.type == FrameType.SUNK:  # the filler's receipt; the answer follows
                header, body = recv_frame(self.sock, self.max_frame_bytes)
        except socket.timeout:
            raise LiveError(f"the server at {self.host}:{self.port} did not answer within {self.timeout_s:g} s") from None
        except (ConnectionError, BrokenPipeError) as err:
            raise LiveError(f"connection to {self.host}:{self.port} broke: {err}") from None
        done = time.monotonic_ns()
        if header.type == FrameType.ERROR:
            closing = bool(header.flags & FLAG_CLOSING)
            if closing:
                self.close(send_close=False)
            raise RemoteError(f"server: {body.decode('utf-8', 'replace')}", closing=closing)
        if header.type != expect:
            raise ProtocolError(f"expected a {expect.name} reply, got {header.type.name}")
        return header, body, sent, done

    def open(self, codec: str, options: dict[str, Any] | None = None, *, model: str | None = None,
             model_fingerprint: str | None = None, rtt_ms: float = 0.0) -> tuple[int, dict[str, Any]]:
        """Open a codec session; returns (codec id, the server's description)."""
        codec_id = self._next_codec_id
        self._next_codec_id += 1
        request = {"codec": codec, "options": options or {}, "model": model,
                   "model_fingerprint": model_fingerprint, "rtt_ms": float(rtt_ms)}
        _, body, _, _ = self._exchange(pack_frame(FrameType.OPEN, json_body(request), codec_id=codec_id),
                                       FrameType.OPENED)
        return codec_id, parse_json(body, "OPENED")

    def infer(self, codec_id: int, sample_id: int, data: bytes, primer: int = 0) -> Timed:
        """Send one payload; the server's top-1 and timings, with the client's send/answer clock.

        ``primer`` > 0 first sends a SINK filler of that many bytes, unanswered until the result is
        in (see splitbench.live.shaping.primer_size: it empties a shaper's token bucket).
        """
        frame = pack_frame(FrameType.DATA, data, codec_id=codec_id, sample_id=sample_id)
        _, body, sent, done = self._exchange(frame, FrameType.RESULT, primer)
        return Timed(parse_result(body), sent, done)

    def sink(self, data: bytes, sample_id: int = 0, primer: int = 0) -> Timed:
        """Send bytes the server only reads (link validation)."""
        _, body, sent, done = self._exchange(pack_frame(FrameType.SINK, data, sample_id=sample_id),
                                             FrameType.SUNK, primer)
        return Timed(parse_result(body), sent, done)

    def stats(self) -> dict[str, Any]:
        _, body, _, _ = self._exchange(pack_frame(FrameType.STATS), FrameType.STATS_REPLY)
        return parse_json(body, "STATS_REPLY")

    def close(self, send_close: bool = True) -> None:
        if self._sock is None:
            return
        if send_close:
            with contextlib.suppress(OSError):
                self._sock.sendall(pack_frame(FrameType.CLOSE))
        with contextlib.suppress(OSError):
            self._sock.close()
        self._sock = None

    def __enter__(self) -> "LiveClient":
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()
