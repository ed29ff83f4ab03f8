"""FrankenSplit's wire format: a CRC-32 of the rest, then the range-coded strings.

    factorized:  crc32 (4 bytes, big-endian) | y string
    hyperprior:  crc32 | varint len(z string) | z string | y string

The latent shape is fixed by the checkpoint (agreed in advance, like JPEG tables), so no header
travels. compressai's rANS decoder reads its input without bounds checks, so a damaged string
must never reach it unguarded: a payload longer than the encoder can produce is rejected first,
the CRC-32 (as tofc's check) rejects damaged and foreign payloads but 1 in 2**32, every rANS
string must be a whole number of 32-bit words, and the decoder only ever sees a copy zero-padded
by the proven read bound of splitbench.codecs.rans, so even CRC-valid garbage decodes to wrong
latents instead of reading outside its buffer, in time and memory bounded by the latent size.
"""
from __future__ import annotations

import zlib

from splitbench.codecs.bitstream import Reader, put_varint
from splitbench.codecs.rans import read_padding
from splitbench.errors import PayloadError

NAME = "frankensplit"
WORD = 4  # compressai's rANS emits 32-bit words
CHECK_BYTES = 4


def _check(body: bytes) -> bytes:
    return zlib.crc32(body).to_bytes(CHECK_BYTES, "big")


def pack_strings(strings: list[bytes]) -> bytes:
    """Per-sample strings ([y] or [z, y]) -> payload bytes."""
    body = b"".join(put_varint(len(s)) + s for s in strings[:-1]) + strings[-1]
    return _check(body) + body


def unpack_strings(data: bytes, n_strings: int, index: int = 0, max_bytes: int | None = None) -> list[bytes]:
    """Payload bytes -> strings; PayloadError naming the codec and batch index for anything malformed."""
    where = f"{NAME} payload {index} ({len(data)} bytes)"
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadError(f"{where} is corrupt: longer than the {max_bytes} bytes this codec's encoder can produce")
    if len(data) <= CHECK_BYTES:
        raise PayloadError(f"{where} is {'empty' if not data else 'truncated'}: a valid one has a "
                           f"{CHECK_BYTES}-byte CRC-32 and at least one 4-byte string")
    body = data[CHECK_BYTES:]
    if data[:CHECK_BYTES] != _check(body):
        raise PayloadError(f"{where} fails its CRC-32: truncated, corrupted or from another codec")
    reader = Reader(body, NAME, index)
    strings = [reader.string() for _ in range(n_strings - 1)]
    strings.append(body[reader.pos:])
    for s in strings:
        if not s or len(s) % WORD:
            raise PayloadError(f"{where} is corrupt: a range-coded string of {len(s)} bytes "
                               f"(must be a positive multiple of {WORD})")
    return strings


def padded(string: bytes, n_symbols: int) -> bytes:
    """A copy followed by zero words, so the rANS decoder stays inside the buffer it was given.

    A valid string is consumed exactly; a damaged one (CRC-valid by chance or forged) is decoded
    into wrong symbols, reading at most the bound of :func:`splitbench.codecs.rans.read_padding`.
    """
    return string + read_padding(n_symbols, len(string))
