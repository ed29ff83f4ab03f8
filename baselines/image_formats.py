"""Where a JPEG, PNG or WebP file ends, found from its structure before any pixel is decoded.

Pillow stops reading at the end of the image and ignores whatever follows, so a payload with
trailing bytes (or the same payload twice) would decode and be counted at the wrong rate. The
image codecs compare the end found here with the payload length. Each walk is a single pass over
the markers/chunks (linear in the payload); a structure that runs past the end raises ValueError.
"""
from __future__ import annotations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jpeg_end(data: bytes) -> int:
    """Offset just past the EOI marker that ends the JPEG starting at offset 0."""
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise ValueError("it does not start with a JPEG SOI marker")
    pos = 2
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at offset {pos} (truncated or damaged before EOI)")
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            raise ValueError("it ends inside a JPEG marker, before EOI")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return pos
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length field
            continue
        if pos + 2 > n:
            raise ValueError("it ends inside a JPEG segment header, before EOI")
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            raise ValueError(f"JPEG segment at offset {pos} has an impossible length {length}")
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            pos = _scan_end(data, pos)


def _scan_end(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data (skips stuffed 0xFF00 and RSTn)."""
    n = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            raise ValueError("it ends inside JPEG scan data, before EOI")
        follower = data[pos + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7:
            pos += 2
        elif follower == 0xFF:
            pos += 1
        else:
            return pos


def png_end(data: bytes) -> int:
    """Offset just past the IEND chunk of the PNG starting at offset 0."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("it does not start with the PNG signature")
    pos, n = len(PNG_SIGNATURE), len(data)
    while True:
        if pos + 12 > n:
            raise ValueError("it ends before the PNG IEND chunk")
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if pos > n:
            raise ValueError(f"PNG chunk {kind!r} runs past the end of the payload")
        if kind == b"IEND":
            return pos


def webp_end(data: bytes) -> int:
    """Offset just past the RIFF container of the WebP file starting at offset 0."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("it does not start with a RIFF/WEBP header")
    size = int.from_bytes(data[4:8], "little")
    return 8 + size + (size & 1)  # RIFF pads odd chunk sizes to even


def image_end(fmt: str, data: bytes) -> int:
    """Dispatch on Pillow's format name (``JPEG``, ``PNG``, ``WEBP``)."""
    return {"JPEG": jpeg_end, "PNG": png_end, "WEBP": webp_end}[fmt](data)
