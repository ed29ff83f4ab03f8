"""Compact framing for learned-codec payloads: LEB128 varints and length-prefixed byte strings.

Every learned codec sends a few small integers (shapes, counts, expert indices) and one or more
entropy-coded strings. This module packs them without pickle and with strict checks, so a
truncated or corrupted payload raises PayloadError instead of crashing a decoder.
"""
from __future__ import annotations

from ..errors import PayloadError


def put_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Reader:
    """Sequential reader over one payload; every read is bounds-checked."""

    def __init__(self, data: bytes, codec: str, index: int | None = None) -> None:
        self.data = data
        self.pos = 0
        self.codec = codec
        self.index = index  # the payload's position in its batch, for error messages

    def fail(self, what: str) -> None:
        which = "" if self.index is None else f" {self.index}"
        raise PayloadError(f"{self.codec} payload{which} ({len(self.data)} bytes) is corrupt: {what}")

    def varint(self, limit: int = 1 << 32) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data):
                self.fail("truncated inside an integer")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                self.fail("integer too long")
        if value > limit:
            self.fail(f"value {value} exceeds its limit {limit}")
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"needs {n} more bytes at offset {self.pos}, has {len(self.data) - self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def string(self) -> bytes:
        return self.take(self.varint(limit=len(self.data)))

    def done(self) -> None:
        if self.pos != len(self.data):
            self.fail(f"{len(self.data) - self.pos} unexpected trailing bytes")


def pack(ints: list[int], strings: list[bytes]) -> bytes:
    """``ints`` as varints, then each string with a varint length prefix."""
    return b"".join([*(put_varint(i) for i in ints), *(put_varint(len(s)) + s for s in strings)])


def unpack(data: bytes, n_ints: int, n_strings: int, codec: str,
           limits: list[int] | None = None, index: int | None = None) -> tuple[list[int], list[bytes]]:
    """Inverse of :func:`pack`; raises PayloadError on truncation, excess or out-of-range values."""
    reader = Reader(data, codec, index)
    if not data:
        reader.fail("empty")
    limits = limits or [1 << 32] * n_ints
    ints = [reader.varint(limits[i]) for i in range(n_ints)]
    strings = [reader.string() for _ in range(n_strings)]
    reader.done()
    return ints, strings
