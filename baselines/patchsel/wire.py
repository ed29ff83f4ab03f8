"""The patchsel wire format: which patches were kept, then their pixels. No pickle, every field
bounds-checked, so bad bytes raise PayloadError naming the codec.

    varint n                      number of kept patches, 1..P (P = 49 on the 7x7 grid)
    rank  (ceil(log2 C(P,n)) bits, big-endian, whole bytes)
                                  the kept set as its rank in the combinatorial number system:
                                  an n-subset of P patches needs exactly log2 C(P,n) bits, never
                                  more than a 49-bit bitmap or a list of 6-bit indices (7 bytes
                                  at most, 0 when all patches are kept)
    pixels (the rest)             the kept pixels, coded as below

Pixel coding (agreed by configuration, not signalled):

* ``lossless``: the kept pixels in raster order of the original image (rows of kept patches stay
  contiguous, which deflate likes better than patch-by-patch order), raw deflate level 9 (no zlib
  header or checksum: the count and mask already frame it);
* ``jpeg``: a mosaic of the kept patches, row-major, as many patches per row as the grid is wide
  (28 px here) and ceil(n / width) patch rows high, zero padded; baseline JPEG at a set quality,
  optionally abbreviated (Pillow ``streamtype=2``: tables agreed in advance, as codec=jpeg does).
"""
from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from splitbench.codecs.bitstream import Reader, put_varint
from splitbench.errors import PayloadError

from ..image_codecs import describe, jpeg_max_bytes
from ..image_formats import jpeg_end

PIXEL_CODINGS = ("lossless", "jpeg")


@dataclass(frozen=True)
class Grid:
    """The patch grid both ends share: ``channels`` x (rows*patch) x (cols*patch) images."""

    channels: int
    rows: int
    cols: int
    patch: int

    @property
    def patches(self) -> int:
        return self.rows * self.cols

    def to_patches(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) -> (P, C, p, p), patches in row-major grid order."""
        c, p = self.channels, self.patch
        return image.reshape(c, self.rows, p, self.cols, p).transpose(1, 3, 0, 2, 4).reshape(-1, c, p, p)


# -- the kept-patch set: combinatorial number system ------------------------------------------------
def mask_bytes(total: int, n: int) -> int:
    """Bytes of the rank of an ``n``-subset of ``total`` patches."""
    return (math.comb(total, n) - 1).bit_length() + 7 >> 3


def rank_subset(indices: list[int]) -> int:
    """Rank of a strictly increasing index list: sum_i C(c_i, i+1)."""
    return sum(math.comb(c, i + 1) for i, c in enumerate(indices))


def unrank_subset(rank: int, n: int) -> list[int]:
    """Inverse of :func:`rank_subset` (``rank`` must be < C(total, n), checked by the caller)."""
    out = []
    for i in range(n, 0, -1):
        c = i - 1
        while math.comb(c + 1, i) <= rank:
            c += 1
        rank -= math.comb(c, i)
        out.append(c)
    return out[::-1]


# -- pixels ---------------------------------------------------------------------------------------
def _pixel_mask(grid: Grid, indices: np.ndarray) -> np.ndarray:
    keep = np.zeros(grid.patches, dtype=bool)
    keep[indices] = True
    return np.kron(keep.reshape(grid.rows, grid.cols), np.ones((grid.patch, grid.patch), dtype=bool))


def encode_lossless(grid: Grid, image: np.ndarray, indices: np.ndarray) -> bytes:
    pixels = image.transpose(1, 2, 0)[_pixel_mask(grid, indices)]  # (m, C) in raster order
    coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return coder.compress(pixels.tobytes()) + coder.flush()


def max_pixel_bytes(grid: Grid, coding: str) -> int:
    """Longest pixel part: raw deflate of every pixel at its worst-case growth (< 1/64 + framing,
    cf. zlib's deflateBound), or the JPEG bound of the full mosaic."""
    raw = grid.channels * grid.rows * grid.patch * grid.cols * grid.patch
    if coding == "lossless":
        return raw + raw // 64 + 64
    return jpeg_max_bytes(grid.channels, grid.rows * grid.patch, grid.cols * grid.patch)


def max_payload_bytes(grid: Grid, coding: str) -> int:
    """Count + the widest mask + the longest pixel part."""
    widest = max(mask_bytes(grid.patches, n) for n in range(1, grid.patches + 1))
    return len(put_varint(grid.patches)) + widest + max_pixel_bytes(grid, coding)


def decode_lossless(grid: Grid, blob: bytes, indices: np.ndarray, codec: str, index: int = 0) -> np.ndarray:
    expected = len(indices) * grid.patch * grid.patch * grid.channels
    inflater = zlib.decompressobj(-15)
    try:
        raw = inflater.decompress(blob, expected + 1)
    except zlib.error as err:
        raise PayloadError(f"{codec} payload {index}: the lossless pixel data is corrupt ({err})") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        raise PayloadError(f"{codec} payload {index}: the mask has {len(indices)} patches ({expected} pixel bytes) but "
                           f"the pixel data {'holds more' if len(raw) > expected else f'holds {len(raw)} bytes or is truncated'}")
    canvas = np.zeros((grid.rows * grid.patch, grid.cols * grid.patch, grid.channels), dtype=np.uint8)
    canvas[_pixel_mask(grid, indices)] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, grid.channels)
    return grid.to_patches(canvas.transpose(2, 0, 1))[indices]


class JpegPixels:
    """The mosaic JPEG coder; ``abbreviated`` leaves the agreed tables off the wire."""

    def __init__(self, quality: int, abbreviated: bool) -> None:
        self.quality = quality
        self.abbreviated = abbreviated
        self._tables: dict[str, bytes] = {}

    def mosaic_shape(self, grid: Grid, n: int) -> tuple[int, int]:
        """(height, width) in pixels of the mosaic holding ``n`` patches."""
        return -(-n // grid.cols) * grid.patch, grid.cols * grid.patch

    def tables(self, mode: str) -> bytes:
        if mode not in self._tables:
            buf = io.BytesIO()
            Image.new(mode, (8, 8)).save(buf, "JPEG", quality=self.quality, streamtype=1)
            self._tables[mode] = buf.getvalue()
        return self._tables[mode]

    def encode(self, grid: Grid, image: np.ndarray, indices: np.ndarray) -> bytes:
        n, p = len(indices), grid.patch
        rows = -(-n // grid.cols)
        tiles = np.zeros((rows * grid.cols, grid.channels, p, p), dtype=np.uint8)
        tiles[:n] = grid.to_patches(image)[indices]
        mosaic = tiles.reshape(rows, grid.cols, grid.channels, p, p).transpose(0, 3, 1, 4, 2).reshape(
            rows * p, grid.cols * p, grid.channels)
        pil = Image.fromarray(mosaic[..., 0], "L") if grid.channels == 1 else Image.fromarray(mosaic, "RGB")
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=self.quality, **({"streamtype": 2} if self.abbreviated else {}))
        return buf.getvalue()

    def decode(self, grid: Grid, blob: bytes, indices: np.ndarray, codec: str, index: int = 0) -> np.ndarray:
        n, p, mode = len(indices), grid.patch, "L" if grid.channels == 1 else "RGB"
        height, width = self.mosaic_shape(grid, n)
        if self.abbreviated:
            if blob[:2] != b"\xff\xd8":
                raise PayloadError(f"{codec} payload {index}: the JPEG mosaic does not start with SOI")
            blob = self.tables(mode)[:-2] + blob[2:]
        try:
            end = jpeg_end(blob)
        except ValueError as err:
            raise PayloadError(f"{codec} payload {index}: the JPEG mosaic is not valid ({err})") from None
        if end != len(blob):
            raise PayloadError(f"{codec} payload {index}: {len(blob) - end} trailing bytes after the JPEG mosaic")
        try:
            with Image.open(io.BytesIO(blob), formats=["JPEG"]) as im:
                if im.size != (width, height):  # before decoding pixels: no decompression bombs
                    raise PayloadError(f"{codec} payload {index}: the mask has {n} patches (a {width}x{height} "
                                       f"mosaic) but the JPEG is {im.size[0]}x{im.size[1]}")
                im.load()
                arr = np.asarray(im.convert(mode))
        except PayloadError:
            raise
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... on bad bytes
            raise PayloadError(f"{codec} payload {index}: the JPEG mosaic is not valid ({describe(err)})") from None
        arr = arr[..., None] if arr.ndim == 2 else arr
        tiles = arr.reshape(height // p, p, grid.cols, p, grid.channels).transpose(0, 2, 4, 1, 3)
        return tiles.reshape(-1, grid.channels, p, p)[:n].copy()


# -- the whole payload -----------------------------------------------------------------------------
def pack_payload(grid: Grid, indices: np.ndarray, pixels: bytes) -> bytes:
    n = len(indices)
    rank = rank_subset([int(i) for i in indices])
    return put_varint(n) + rank.to_bytes(mask_bytes(grid.patches, n), "big") + pixels


def unpack_payload(grid: Grid, blob: bytes, codec: str, index: int = 0,
                   max_bytes: int | None = None) -> tuple[np.ndarray, bytes]:
    """(kept indices ascending, pixel bytes); PayloadError on an over-long, empty, short or
    impossible header."""
    reader = Reader(blob, codec, index)
    if max_bytes is not None and len(blob) > max_bytes:
        reader.fail(f"longer than the {max_bytes} bytes this codec's encoder can produce")
    if not blob:
        reader.fail("empty")
    n = reader.varint(limit=grid.patches)
    if n == 0:
        reader.fail("it keeps 0 patches (an offloaded image always carries at least one)")
    rank = int.from_bytes(reader.take(mask_bytes(grid.patches, n)), "big")
    if rank >= math.comb(grid.patches, n):
        reader.fail(f"mask rank {rank} is out of range for {n} of {grid.patches} patches")
    pixels = reader.take(len(blob) - reader.pos)
    if not pixels:
        reader.fail(f"the mask has {n} patches but no pixel data follows")
    return np.asarray(unrank_subset(rank, n), dtype=np.int64), pixels
