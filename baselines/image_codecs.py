"""Standard image codecs through Pillow: ``jpeg``, ``webp``, ``png``.

Bytes are the whole file as Pillow writes it, headers included: they cross the wire. Tiny images
make a JPEG mostly header (a 28x28 JPEG carries ~570 bytes of tables), so ``jpeg`` also offers the
*abbreviated* form (``codec.abbreviated=true``, Pillow ``streamtype=2``): both ends agree on the
tables in advance, only the scan data and frame header travel, and the server splices the agreed
tables back in before decoding. Each row says which form it used in its rate point.
"""
from __future__ import annotations

import io
import math
import re
from typing import Annotated, Any

import numpy as np
import torch
from PIL import Image

from splitbench.codecs import Codec, Payload, register_codec
from splitbench.errors import PayloadError
from splitbench.options import Range

from .image_formats import image_end

HEADER_BYTES = 4096  # generous room for any format's headers, tables and chunk framing


def jpeg_max_bytes(channels: int, height: int, width: int) -> int:
    """Longest baseline JPEG Pillow can write at this size: headers + every 8x8 block at the worst
    case, 64 coefficients of at most a 16-bit Huffman code + 11 magnitude bits, doubled for 0xFF
    byte stuffing (4:2:0 colour: 6 blocks per 16x16 MCU)."""
    if channels == 1:
        blocks = math.ceil(height / 8) * math.ceil(width / 8)
    else:
        blocks = 6 * math.ceil(height / 16) * math.ceil(width / 16)
    return HEADER_BYTES + blocks * 2 * (64 * 27 // 8)


def describe(err: BaseException) -> str:
    """An exception's first line without object reprs (Pillow names ``<_io.BytesIO at 0x...>``)."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the payload", str(err)).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def to_pil(img: torch.Tensor) -> Image.Image:
    arr = img.to(torch.uint8).cpu().numpy()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0], "L")
    return Image.fromarray(arr.transpose(1, 2, 0), "RGB")


class PillowCodec(Codec):
    """Shared encode/decode around one Pillow format; subclasses give the save options."""

    sends_image = True
    format = ""

    def save_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode_one(self, img: torch.Tensor) -> bytes:
        buf = io.BytesIO()
        to_pil(img).save(buf, self.format, **self.save_options())
        return buf.getvalue()

    def encode(self, features: torch.Tensor) -> list[Payload]:
        return [Payload(self.encode_one(img)) for img in features]

    def prepare(self, blob: bytes, index: int) -> bytes:
        """The complete file Pillow decodes (abbreviated JPEG splices its agreed tables in)."""
        return blob

    def check_framing(self, blob: bytes, index: int, sent: int) -> None:
        """PayloadError unless ``blob`` is exactly one whole image: no trailing or repeated data.
        ``sent`` is the payload's length on the wire (abbreviated JPEG adds its tables to it)."""
        where = f"{self.name} payload {index} ({sent} bytes)"
        limit = self.max_payload_bytes()
        if len(blob) > limit:
            raise PayloadError(f"{where} is longer than the {limit} bytes this codec's encoder can produce")
        try:
            end = image_end(self.format, blob)
        except ValueError as err:
            raise PayloadError(f"{where} is not a valid {self.format} image: {err}") from None
        if end != len(blob):
            raise PayloadError(f"{where} is not a valid {self.format} image: "
                               + (f"{len(blob) - end} trailing bytes after the image end" if end < len(blob)
                                  else f"its header declares {end} bytes"))

    def decode_one(self, blob: bytes, index: int) -> torch.Tensor:
        c, h, w = self.task.input_size
        full = self.prepare(blob, index)
        self.check_framing(full, index, len(blob))
        try:
            with Image.open(io.BytesIO(full), formats=[self.format]) as im:
                if im.size != (w, h):  # checked before decoding pixels: no decompression bombs
                    raise PayloadError(f"{self.name} payload {index} is {im.size[0]}x{im.size[1]}, "
                                       f"expected {w}x{h}")
                im.load()
                arr = np.asarray(im.convert("L" if c == 1 else "RGB"))
        except PayloadError:
            raise
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... on bad bytes
            raise PayloadError(f"{self.name} payload {index} ({len(blob)} bytes) is not a valid "
                               f"{self.format} image: {describe(err)}") from None
        arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        return torch.from_numpy(arr.copy())

    def decode(self, data: list[bytes]) -> torch.Tensor:
        return torch.stack([self.decode_one(blob, i) for i, blob in enumerate(data)])


@register_codec("jpeg")
class JpegCodec(PillowCodec):
    """Baseline JPEG (libjpeg via Pillow), 4:2:0 for colour, standard Huffman tables."""
    client_options = frozenset({"quality", "abbreviated"})

    format = "JPEG"

    def __init__(self, quality: Annotated[int, Range(1, 100)] = 75, abbreviated: bool = False) -> None:
        self.quality, self.abbreviated = quality, abbreviated
        self._tables: dict[str, bytes] = {}

    def max_payload_bytes(self) -> int:
        """See :func:`jpeg_max_bytes` (the abbreviated form is shorter still)."""
        return jpeg_max_bytes(*self.task.input_size)

    def save_options(self) -> dict[str, Any]:
        return {"quality": self.quality, **({"streamtype": 2} if self.abbreviated else {})}

    def tables(self, mode: str) -> bytes:
        """The tables-only stream both ends derive from the quality (Pillow ``streamtype=1``)."""
        if mode not in self._tables:
            buf = io.BytesIO()
            size = self.task.input_size[1:]
            Image.new(mode, (size[1], size[0])).save(buf, "JPEG", quality=self.quality, streamtype=1)
            self._tables[mode] = buf.getvalue()
        return self._tables[mode]

    def prepare(self, blob: bytes, index: int) -> bytes:
        if not self.abbreviated:
            return blob
        if blob[:2] != b"\xff\xd8":
            raise PayloadError(f"jpeg (abbreviated) payload {index} ({len(blob)} bytes) does not start with SOI "
                               f"({blob[:2].hex() or 'empty'})")
        if len(blob) > self.max_payload_bytes():
            raise PayloadError(f"jpeg payload {index} ({len(blob)} bytes) is longer than the "
                               f"{self.max_payload_bytes()} bytes this codec's encoder can produce")
        tables = self.tables("L" if self.task.input_size[0] == 1 else "RGB")
        return tables[:-2] + blob[2:]  # tables without EOI + image without SOI = a full JPEG

    def rate_point(self) -> str:
        return f"q={self.quality}" + (" abbrev" if self.abbreviated else "")

    def series(self) -> str:
        return "jpeg (abbreviated)" if self.abbreviated else "jpeg"


@register_codec("webp")
class WebpCodec(PillowCodec):
    client_options = frozenset({"quality", "lossless", "method"})
    format = "WEBP"

    def __init__(self, quality: Annotated[int, Range(0, 100)] = 75, lossless: bool = False,
                 method: Annotated[int, Range(0, 6)] = 4) -> None:
        self.quality, self.lossless, self.method = quality, lossless, method

    def max_payload_bytes(self) -> int:
        """Headers + 8 bytes per pixel of the 16-aligned image: lossy VP8 codes at most 400
        coefficients of <= 25 bits per 16x16 macroblock (~5 bits/pixel), lossless VP8L at most
        four <= 15-bit codes per pixel (60 bits)."""
        _, h, w = self.task.input_size
        return HEADER_BYTES + 8 * (16 * math.ceil(h / 16)) * (16 * math.ceil(w / 16))

    def save_options(self) -> dict[str, Any]:
        return {"quality": self.quality, "lossless": self.lossless, "method": self.method}

    def rate_point(self) -> str:
        return "lossless" if self.lossless else f"q={self.quality}"

    def series(self) -> str:
        return "webp (lossless)" if self.lossless else "webp"


@register_codec("png")
class PngCodec(PillowCodec):
    """Lossless; ``compress_level`` (0-9) trades encode time for bytes. PNG has no quality knob."""
    client_options = frozenset({"compress_level"})

    format = "PNG"

    def __init__(self, compress_level: Annotated[int, Range(0, 9)] = 9) -> None:
        self.compress_level = compress_level

    def max_payload_bytes(self) -> int:
        """Headers + the filtered scanlines (a filter byte per row) + deflate's worst-case growth
        (stored blocks: well under 1/64, cf. zlib's deflateBound)."""
        c, h, w = self.task.input_size
        raw = h * (1 + c * w)
        return HEADER_BYTES + raw + raw // 64

    def save_options(self) -> dict[str, Any]:
        return {"compress_level": self.compress_level, "optimize": False}

    def rate_point(self) -> str:
        return f"level={self.compress_level}"
