"""Safe use of compressai's rANS coder: symbol ranges, stream-length bounds and read-ahead padding.

compressai's C++ coder trusts its input. Three facts about it (compressai ``rans_interface.cpp``,
``rans64.h``; 16-bit CDF precision, 4-bit bypass chunks, 64-bit state, 32-bit words) set the
bounds here:

* Encoding an escape whose raw value needs 8 or more 4-bit chunks (``raw >= 2**28``, or negative
  after int32 overflow) loops forever in C++ while holding the GIL. Decoding garbage can yield
  such symbols, so decoded symbols are range-checked (:func:`check_symbols`) before any re-encode.
  ``MAX_SYMBOL`` = 2**16 keeps raw values below 2**18, far from 2**28; real latents of the shipped
  codecs stay below 20 in magnitude (measured on 1,000 test images and on uniform noise), so the
  margin is >3,000x.
* Each coded symbol costs at most 16 bits plus, for an escape, 4 bits per bypass chunk of its
  raw value and of its chunk count; so with symbols in range the longest stream an encoder can
  flush is :func:`max_stream_bytes`. Decoders reject longer payloads before decoding.
* The decoder reads ahead without bounds checks and, on garbage, escape chunk counts can make it
  read well past the stream. Every coder operation reads at most one 32-bit word; a run of
  escape-count chunks (value 15 continues the run) lasts at most 17 reads once the stream is
  exhausted (a renormalisation shifts in a zero word, whose chunks are 0), plus 8 per word of the
  stream itself, and an escape reads at most 15 raw chunks per count chunk. So decoding
  ``n_symbols`` symbols reads at most ``2 + 273 * n_symbols + 128 * words`` words:
  :func:`read_padding` zero-pads by that much, which keeps every read inside the buffer and the
  work and memory linear in the payload plus a constant per symbol.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import PayloadError, SplitbenchError

PRECISION = 16  # bits of compressai's quantised CDFs: no symbol costs more than this
BYPASS_BITS = 4  # compressai's escape chunk size
MAX_SYMBOL = 1 << 16  # |symbol| accepted from a decoder or sent to an encoder


def check_symbols(symbols: Sequence[int], codec: str, index: int) -> None:
    """PayloadError if a decoded symbol lies outside ``[-MAX_SYMBOL, MAX_SYMBOL]``.

    Called on every decoded batch of symbols before anything re-encodes or uses them.
    """
    if len(symbols) and (max(symbols) > MAX_SYMBOL or min(symbols) < -MAX_SYMBOL):
        raise PayloadError(f"{codec} payload {index} is corrupt: a decoded symbol lies outside "
                           f"+-{MAX_SYMBOL} (no encoder produces it)")


def check_latent(values: torch.Tensor, codec: str) -> None:
    """Encoder side: refuse latents whose symbols could leave the range (never seen on real data;
    it would mean broken weights, and compressai's encoder could loop forever on them)."""
    if not values.numel():
        return
    if values.is_floating_point():
        ok = bool(torch.isfinite(values).all() and values.abs().max() < MAX_SYMBOL - 1)
    else:  # integer symbols: compare both ends (abs() of the most negative int overflows)
        low, high = torch.aminmax(values)
        ok = bool(low > -(MAX_SYMBOL - 1) and high < MAX_SYMBOL - 1)
    if not ok:
        raise SplitbenchError(f"{codec}: the network produced a latent outside the coder's range "
                              f"+-{MAX_SYMBOL} (or non-finite); its weights are broken")


def _chunks(value: int) -> int:
    return max(1, -(-value.bit_length() // BYPASS_BITS))


def max_stream_bytes(n_symbols: int, max_value: int) -> int:
    """Longest flushed rANS stream for ``n_symbols`` symbols whose offset value is at most
    ``max_value`` in magnitude (``MAX_SYMBOL`` + the table's largest offset and CDF length)."""
    raw_chunks = _chunks(2 * max_value + 1)
    count_chunks = raw_chunks // ((1 << BYPASS_BITS) - 1) + 1
    bits = n_symbols * (PRECISION + BYPASS_BITS * (raw_chunks + count_chunks))
    return 4 * -(-bits // 32) + 16  # whole words, the 64-bit flushed state and one partial word


def table_max_value(offsets: Sequence[int], lengths: Sequence[int]) -> int:
    """``max_value`` for :func:`max_stream_bytes` from a CDF table's offsets and lengths."""
    return MAX_SYMBOL + max((abs(o) for o in offsets), default=0) + max(lengths, default=0)


def read_padding(n_symbols: int, n_bytes: int) -> bytes:
    """Zero bytes to append to an ``n_bytes`` stream before decoding ``n_symbols`` symbols from it."""
    words = 2 + 273 * n_symbols + 128 * -(-n_bytes // 4)
    return bytes(max(0, 4 * words - n_bytes))
