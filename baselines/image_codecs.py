"""Standard image codecs through Pillow: ``jpeg``, ``webp``, ``png``.

Bytes are the whole file as Pillow writes it, headers included: they cross the wire. Tiny images
make a JPEG mostly header (a 28x28 JPEG carries ~570 bytes of tables), so ``jpeg`` also offers the
*abbreviated* form (``codec.abbreviated=true``, Pillow ``streamtype=2``): both ends agree on the
tables in advance, only the scan data and frame header travel, and the server splices the agreed
tables back in before decoding. Each row says which form it used in its rate point.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from splitbench.codecs import Codec, Payload, register_codec
from splitbench.errors import ConfigError, PayloadError


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

    def prepare(self, blob: bytes) -> bytes:
        return blob

    def decode_one(self, blob: bytes, index: int) -> torch.Tensor:
        c, h, w = self.task.input_size
        try:
            with Image.open(io.BytesIO(self.prepare(blob)), formats=[self.format]) as im:
                if im.size != (w, h):  # checked before decoding pixels: no decompression bombs
                    raise PayloadError(f"{self.name} payload {index} is {im.size[0]}x{im.size[1]}, "
                                       f"expected {w}x{h}")
                im.load()
                arr = np.asarray(im.convert("L" if c == 1 else "RGB"))
        except PayloadError:
            raise
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... on bad bytes
            raise PayloadError(f"{self.name} payload {index} ({len(blob)} bytes) is not a valid "
                               f"{self.format} image: {err}") from None
        arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        return torch.from_numpy(arr.copy())

    def decode(self, data: list[bytes]) -> torch.Tensor:
        return torch.stack([self.decode_one(blob, i) for i, blob in enumerate(data)])


def _check_int(codec: str, key: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"codec.{key} for {codec} must be an integer in [{low}, {high}], got {value!r}")
    return value


@register_codec("jpeg")
class JpegCodec(PillowCodec):
    """Baseline JPEG (libjpeg via Pillow), 4:2:0 for colour, standard Huffman tables."""
    client_options = frozenset({"quality", "abbreviated"})

    format = "JPEG"

    def __init__(self, quality: int = 75, abbreviated: bool = False) -> None:
        self.quality = _check_int("jpeg", "quality", quality, 1, 100)
        self.abbreviated = bool(abbreviated)
        self._tables: dict[str, bytes] = {}

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

    def prepare(self, blob: bytes) -> bytes:
        if not self.abbreviated:
            return blob
        if blob[:2] != b"\xff\xd8":
            raise PayloadError(f"jpeg (abbreviated) payload does not start with SOI ({blob[:2].hex() or 'empty'})")
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

    def __init__(self, quality: int = 75, lossless: bool = False, method: int = 4) -> None:
        self.quality = _check_int("webp", "quality", quality, 0, 100)
        self.lossless = bool(lossless)
        self.method = method

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

    def __init__(self, compress_level: int = 9) -> None:
        self.compress_level = _check_int("png", "compress_level", compress_level, 0, 9)

    def save_options(self) -> dict[str, Any]:
        return {"compress_level": self.compress_level, "optimize": False}

    def rate_point(self) -> str:
        return f"level={self.compress_level}"
