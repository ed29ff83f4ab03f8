"""The live-mode wire format: one fixed 24-byte header, then a body; never pickle.

Why a hand-made frame instead of pickle, HTTP or gRPC: the server must survive arbitrary bytes from
the network (pickle executes them), and the latency model (splitbench.channel) charges exactly
``app_header`` = 24 bytes per request on top of the payload, so the frame must cost exactly that.

Header (network byte order, ``struct`` format ``!4sBBHIQI``)::

    magic     4s  b"SBLV"
    version   B   VERSION (1)
    type      B   FrameType
    flags     H   bit 0 on ERROR: the server closes the connection after it; otherwise 0
    codec_id  I   connection-local id of an opened codec (OPEN assigns it; 0 where unused)
    sample_id Q   the client's sample index, echoed in the reply
    length    I   body length in bytes, at most the receiver's ``max_frame_bytes``

Bodies: OPEN and OPENED / STATS_REPLY carry UTF-8 JSON objects (small, bounded), DATA and SINK the
payload bytes as the codec produced them, RESULT / SUNK the fixed :data:`RESULT` struct, ERROR a
UTF-8 message.
"""
from __future__ import annotations

import enum
import json
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import SplitbenchError

MAGIC = b"SBLV"
VERSION = 1
HEADER = struct.Struct("!4sBBHIQI")
HEADER_SIZE = HEADER.size  # 24: conf/bandwidth/*.yaml app_header
#: pred (int32, -1 for SINK), t_decode s, t_server s, server monotonic ns when the header arrived /
#: when the last body byte arrived (comparable with the client's clock only on the same host)
RESULT = struct.Struct("!iddQQ")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_JSON_BODY = 64 * 1024
#: deepest nesting of objects/arrays a JSON body may have (an OPEN needs 3: request, options, a list)
MAX_JSON_DEPTH = 16
FLAG_CLOSING = 1


class FrameType(enum.IntEnum):
    OPEN = 1         # client: {"codec", "options", "model", "model_fingerprint", "rtt_ms"}
    DATA = 2         # client: one sample's payload for codec_id
    SINK = 3         # client: bytes the server reads and discards (link validation, load tests)
    STATS = 4        # client: ask for server counters (RSS, connections, errors)
    CLOSE = 5        # client: goodbye
    OPENED = 0x81    # server: {"codec", "rate_point", "model"}
    RESULT = 0x82    # server: RESULT struct for a DATA frame
    SUNK = 0x83      # server: RESULT struct for a SINK frame
    STATS_REPLY = 0x84
    ERROR = 0xFF     # server: UTF-8 message; FLAG_CLOSING if the connection ends


CLIENT_TYPES = frozenset({FrameType.OPEN, FrameType.DATA, FrameType.SINK, FrameType.STATS, FrameType.CLOSE})
JSON_TYPES = frozenset({FrameType.OPEN, FrameType.OPENED, FrameType.STATS_REPLY})


class ProtocolError(SplitbenchError):
    """Bytes on the connection that are not a valid splitbench frame (the connection is closed)."""


class RemoteError(SplitbenchError):
    """The server answered with an ERROR frame; ``closing`` says whether it hung up."""

    def __init__(self, message: str, closing: bool = False) -> None:
        super().__init__(message)
        self.closing = closing


@dataclass(frozen=True)
class Header:
    type: FrameType
    flags: int
    codec_id: int
    sample_id: int
    length: int


@dataclass(frozen=True)
class Result:
    pred: int
    t_decode: float
    t_server: float
    recv_first_ns: int
    recv_last_ns: int


def pack_frame(ftype: FrameType, body: bytes = b"", *, codec_id: int = 0, sample_id: int = 0,
               flags: int = 0) -> bytes:
    """Header + body as one buffer (one ``send``: no extra small TCP segment for the header)."""
    return HEADER.pack(MAGIC, VERSION, int(ftype), flags, codec_id, sample_id, len(body)) + body


def parse_header(raw: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME,
                 allowed: frozenset[FrameType] | None = None) -> Header:
    """Validate a 24-byte header; every violation is a ProtocolError naming what was wrong."""
    if len(raw) != HEADER_SIZE:
        raise ProtocolError(f"truncated header: {len(raw)} of {HEADER_SIZE} bytes")
    magic, version, ftype, flags, codec_id, sample_id, length = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a splitbench live client")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this end speaks {VERSION})")
    try:
        kind = FrameType(ftype)
    except ValueError:
        raise ProtocolError(f"unknown frame type {ftype:#x}; valid: "
                            f"{', '.join(t.name for t in FrameType)}") from None
    if allowed is not None and kind not in allowed:
        raise ProtocolError(f"frame type {kind.name} is not valid here; valid: "
                            f"{', '.join(sorted(t.name for t in allowed))}")
    if flags & ~FLAG_CLOSING or (flags and kind != FrameType.ERROR):
        raise ProtocolError(f"reserved flags set ({flags:#x})")
    limit = MAX_JSON_BODY if kind in JSON_TYPES else max_frame_bytes
    if length > limit:
        raise ProtocolError(f"{kind.name} frame of {length} bytes exceeds the maximum of {limit} bytes")
    return Header(kind, flags, codec_id, sample_id, length)


def json_body(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if len(body) > MAX_JSON_BODY:
        raise ProtocolError(f"JSON body of {len(body)} bytes exceeds {MAX_JSON_BODY}")
    return body


_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def json_depth(body: bytes) -> int:
    """Deepest bracket nesting of a JSON text, found by one linear scan (no recursion).

    Why a scan before ``json.loads``: the C decoder recurses once per level, so a 64 KiB body of
    ``[[[[...`` raises RecursionError inside the server; counting brackets outside string literals
    bounds the depth before any parsing. Only the special characters are visited, so a body costs
    at most one step per byte whatever it holds.
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # position of the character a backslash escapes
    for m in _JSON_SPECIAL.finditer(body):
        ch, pos = m.group(), m.start()
        if pos == escaped_at:
            continue
        if in_string:
            if ch == b"\\":
                escaped_at = pos + 1
            elif ch == b'"':
                in_string = False
        elif ch == b'"':
            in_string = True
        elif ch in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif ch in (b"]", b"}"):
            depth -= 1
    return deepest


def parse_json(body: bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A JSON object from a bounded body; size, depth and syntax violations are ProtocolErrors."""
    if len(body) > MAX_JSON_BODY:
        raise ProtocolError(f"{what} body of {len(body)} bytes exceeds the maximum of {MAX_JSON_BODY} bytes")
    depth = json_depth(body)
    if depth > max_depth:
        raise ProtocolError(f"{what} body nests {depth} levels deep; at most {max_depth} are allowed")
    try:
        obj = json.loads(body.decode("utf-8"))
    except ValueError as err:  # not UTF-8, not JSON, or an integer past Python's digit limit
        raise ProtocolError(f"{what} body is not UTF-8 JSON: {str(err)[:200]}") from None
    except RecursionError:  # unreachable after the depth check; kept so no input can escape as a crash
        raise ProtocolError(f"{what} body nests too deep") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} body must be a JSON object, got {type(obj).__name__}")
    return obj


def pack_result(result: Result) -> bytes:
    return RESULT.pack(result.pred, result.t_decode, result.t_server, result.recv_first_ns, result.recv_last_ns)


def parse_result(body: bytes) -> Result:
    if len(body) != RESULT.size:
        raise ProtocolError(f"RESULT body has {len(body)} bytes, expected {RESULT.size}")
    return Result(*RESULT.unpack(body))


# -- blocking socket helpers (the device side) --------------------------------------------------
def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes or raise ProtocolError if the peer closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ProtocolError(f"connection closed by the peer after {got} of {n} bytes")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, max_frame_bytes: int = DEFAULT_MAX_FRAME) -> tuple[Header, bytes]:
    header = parse_header(recv_exactly(sock, HEADER_SIZE), max_frame_bytes)
    return header, recv_exactly(sock, header.length) if header.length else b""
