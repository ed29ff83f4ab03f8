"""FrankenSplit's wire format: one check byte, then the range-coded strings.

    factorized:  check | y string
    hyperprior:  check | varint len(z string) | z string | y string

The latent shape is fixed by the checkpoint (agreed in advance, like JPEG tables), so no header
travels. compressai's rANS decoder reads its input without bounds checks, so a truncated or
garbage string could make it read past the end of the buffer: the check byte (low byte of the
CRC-32 of the rest) rejects almost every damaged payload up front (all but 1 in 256), every rANS
string must be a whole number of 32-bit words, and the decoder only ever sees a generously
zero-padded copy, so a damaged payload that slips past the check decodes to wrong latents instead
of reading outside its buffer.
"""
from __future__ import annotations

import zlib

from splitbench.codecs.bitstream import Reader, put_varint
from splitbench.errors import PayloadError

NAME = "frankensplit"
WORD = 4  # compressai's rANS emits 32-bit words


def _check(body: bytes) -> int:
    return zlib.crc32(body) & 0xFF


def pack_strings(strings: list[bytes]) -> bytes:
    """Per-sample strings ([y] or [z, y]) -> payload bytes."""
    body = b"".join(put_varint(len(s)) + s for s in strings[:-1]) + strings[-1]
    return bytes([_check(body)]) + body


def unpack_strings(data: bytes, n_strings: int, index: int = 0) -> list[bytes]:
    """Payload bytes -> strings; PayloadError naming the codec for anything malformed."""
    where = f"{NAME} payload {index} ({len(data)} bytes)"
    if not data:
        raise PayloadError(f"{where} is empty")
    body = data[1:]
    if data[0] != _check(body):
        raise PayloadError(f"{where} is corrupt or truncated: check byte {data[0]:#04x}, "
                           f"expected {_check(body):#04x}")
    reader = Reader(body, NAME)
    strings = [reader.string() for _ in range(n_strings - 1)]
    strings.append(body[reader.pos:])
    for s in strings:
        if not s or len(s) % WORD:
            raise PayloadError(f"{where} is corrupt: a range-coded string of {len(s)} bytes "
                               f"(must be a positive multiple of {WORD})")
    return strings


def padded(string: bytes, n_symbols: int) -> bytes:
    """A copy followed by zero words, so the rANS decoder stays inside the buffer it was given.

    A valid string is consumed exactly. A damaged one that slips past the check byte is decoded
    into wrong symbols; each symbol reads at most one word plus one per bypass-coded escape chunk,
    and escape chunk counts come from the damaged bytes, so the margin scales with both.
    """
    return string + bytes(WORD * (8 * n_symbols + 32 * len(string) + 1024))
