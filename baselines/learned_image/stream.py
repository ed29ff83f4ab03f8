"""One rANS stream per image for every latent of a learned codec (compressai's coder, one flush).

compressai's models emit one string per latent tensor and per context step (ELIC: 5 channel
groups x 2 checkerboard passes + z = 11 strings), and each rANS string costs at least 8 bytes of
flushed state. At 28x28 that overhead alone is ~90 bytes, more than a whole coded image. Here the
encoder pushes every symbol, in decoding order, into one ``BufferedRansEncoder`` and flushes once;
the decoder reads them back with one ``RansDecoder`` stream. Symbols, CDF indexes and tables are
exactly those of compressai's ``EntropyBottleneck``/``GaussianConditional`` (after ``update()``).

The same :class:`LatentCoder` object drives both directions, so the encoder and the decoder run the
identical sequence of tensor operations; the caller's model code is written once.

Corrupt input never reaches the C++ decoder unguarded: the stream must be a whole number of 32-bit
words and at most ``max_bytes`` long, the decoder reads a copy zero-padded by the bound of
splitbench.codecs.rans (rANS reads ahead; the padding keeps every read inside the buffer), decoded
symbols are range-checked (out-of-range ones would make compressai's encoder loop forever), and
after decoding the symbols are re-encoded and must reproduce the received stream byte for byte, so
garbage and truncation raise PayloadError.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional

from splitbench.codecs.rans import check_latent, check_symbols, read_padding
from splitbench.errors import PayloadError


@dataclass(frozen=True)
class CdfTable:
    """An entropy model's quantised CDFs as the rANS coder wants them (cached lists).

    Each row is trimmed to its length: compressai pads every CDF to the longest (3133 entries for
    the Gaussian scale table, ~426 used on average) and pybind copies every entry it is handed on
    every call, while the coder only reads ``cdf[:length]``, so the coded bytes are unchanged.
    """

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def of(cls, model: EntropyModel) -> "CdfTable":
        if model._offset.numel() == 0:
            raise RuntimeError("entropy model has no CDF tables; call update(force=True) first")
        lengths = model._cdf_length.reshape(-1).int().tolist()
        rows = [row[:n] for row, n in zip(model._quantized_cdf.tolist(), lengths)]
        return cls(rows, lengths, model._offset.reshape(-1).int().tolist())

    def subset(self, indexes: torch.Tensor) -> tuple[list[int], tuple[list, list, list]]:
        """Only the CDFs these symbols use, and each symbol's index into that subset."""
        used, local = torch.unique(indexes.reshape(-1), return_inverse=True)
        used = used.tolist()
        return local.int().tolist(), ([self.cdfs[i] for i in used], [self.lengths[i] for i in used],
                                      [self.offsets[i] for i in used])


def scale_indexes(gc: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """``gc.build_indexes(scales)`` in one searchsorted instead of a Python loop over the table.

    compressai: index = (len(table) - 1) - #{s in table[:-1] : scale <= s}, which is
    #{s in table[:-1] : s < scale}, the left insertion point. Same float comparisons, same result
    (checked against compressai in the tests); ~10x faster at these latent sizes.
    """
    scales = torch.maximum(scales, gc.lower_bound_scale.bound)  # LowerBound's forward, without autograd
    table = gc.scale_table[:-1].contiguous()
    return torch.searchsorted(table, scales.contiguous(), right=False).int()


def _bounded_likelihood(gc: GaussianConditional, y_hat: torch.Tensor, scales: torch.Tensor,
                        means: torch.Tensor | None) -> torch.Tensor:
    likelihood = gc._likelihood(y_hat, scales, means)
    return gc.likelihood_lower_bound(likelihood) if gc.use_likelihood_bound else likelihood


class LatentCoder:
    """Encodes (``streams=None``) or decodes (``streams=[bytes, ...]``) the latents of a batch,
    one independent rANS stream per image.

    ``bottleneck`` and ``gaussian`` take the real tensor when encoding (ignored when decoding) and
    return the dequantised latent both sides continue from. When encoding, ``estimated_bits``
    holds, per image, -log2 of the model likelihoods of the coded symbols.
    """

    def __init__(self, codec: str, tables: dict[int, CdfTable], streams: list[bytes] | None = None,
                 batch: int = 1, max_bytes: int = 1 << 20, n_symbols: int = 1 << 16, index: int = 0) -> None:
        self.codec = codec
        self.index = index  # batch index of the first stream, for error messages
        self.tables = tables  # id(entropy model) -> its table
        self.encoding = streams is None
        self.batch = batch if streams is None else len(streams)
        # encoder: what -log2 likelihood needs, per coded tensor; summed only when asked for
        self._likelihoods: list[Callable[[], torch.Tensor]] = []
        # per image, every coded (table id, symbols, CDF indexes) in stream order: the encoder codes
        # them in one call at finish(); the decoder re-encodes them there to check the stream
        self._calls: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = [[] for _ in range(self.batch)]
        if self.encoding:
            return
        self.streams = [bytes(s) for s in streams]
        self._decoders = []
        for i, data in enumerate(self.streams, start=index):
            if len(data) > max_bytes:
                raise PayloadError(f"{codec} payload {i} ({len(data)} bytes) is corrupt: longer than the "
                                   f"{max_bytes} bytes this codec's encoder can produce")
            if not data:
                raise PayloadError(f"{codec} payload {i} is empty")
            if len(data) % 4 or len(data) < 8:
                raise PayloadError(f"{codec} payload {i} ({len(data)} bytes) is corrupt: an rANS stream is a "
                                   f"whole number of 32-bit words, at least 8 bytes")
            decoder = RansDecoder()
            # rANS renormalisation and bypass-coded escapes read ahead of the symbol being decoded;
            # on garbage that can run past the end, so give it zeros to read (bounded, see module doc)
            decoder.set_stream(data + read_padding(n_symbols, len(data)))
            self._decoders.append(decoder)

    def _code(self, model: EntropyModel, symbols: torch.Tensor | None, indexes: torch.Tensor) -> torch.Tensor:
        if self.encoding:  # coded at finish(), all of an image's symbols in one coder call
            assert symbols is not None
            symbols = symbols.int()
            for b in range(self.batch):
                self._calls[b].append((id(model), symbols[b].reshape(-1), indexes[b].reshape(-1)))
            return symbols
        table = self.tables[id(model)]
        out = []
        for b in range(self.batch):
            idx, sub = table.subset(indexes[b])
            decoded = self._decoders[b].decode_stream(idx, *sub)
            check_symbols(decoded, self.codec, self.index + b)  # before anything re-encodes them
            sym = torch.tensor(decoded, dtype=torch.int32)
            self._calls[b].append((id(model), sym, indexes[b].reshape(-1)))
            out.append(sym.reshape(indexes.shape[1:]))
        return torch.stack(out)

    def _one_call(self, b: int) -> tuple[list[int], list[int], list, list, list]:
        """Image ``b``'s symbols, CDF indexes and the CDFs they use, as one coder call.

        A buffered rANS encoder only appends symbols until the flush, so one call over the
        concatenation codes the same bytes as one call per step, with one conversion of the
        CDF lists instead of one per step (each CDF used by several steps is passed once).
        """
        calls = self._calls[b]
        if not calls:
            return [], [], [], [], []
        ids = list(self.tables)
        slot = {t: i for i, t in enumerate(ids)}
        keys = torch.cat([idx.long() + (slot[t] << 32) for t, _, idx in calls])
        used, local = torch.unique(keys, return_inverse=True)
        rows = [(self.tables[ids[k >> 32]], k & 0xFFFFFFFF) for k in used.tolist()]
        symbols = torch.cat([sym for _, sym, _ in calls])
        if self.encoding:  # once per image, before the C++ encoder sees any symbol
            check_latent(symbols, self.codec)
        return (symbols.tolist(), local.int().tolist(),
                [t.cdfs[r] for t, r in rows], [t.lengths[r] for t, r in rows], [t.offsets[r] for t, r in rows])

    @property
    def estimated_bits(self) -> list[float]:
        """Encoder: per image, -log2 of the model likelihoods of the coded symbols.

        Computed on demand from what coding kept, not while coding: the estimate is a measurement
        aid, so it stays out of the encode time the runner reports (Payload.resolve_estimate).
        """
        bits = torch.zeros(self.batch, dtype=torch.float64)
        with torch.inference_mode():
            for likelihood in self._likelihoods:
                bits += -torch.log2(likelihood()).reshape(self.batch, -1).sum(1).double()
        return bits.tolist()

    def bottleneck(self, eb: EntropyBottleneck, z: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        """Factorized prior (compressai EntropyBottleneck: symbols around the channel medians)."""
        medians = eb._get_medians().detach().reshape(1, -1, 1, 1).expand(shape)
        indexes = eb._build_indexes(shape)
        symbols = eb.quantize(z, "symbols", medians) if self.encoding else None
        symbols = self._code(eb, symbols, indexes)
        z_hat = eb.dequantize(symbols, medians)
        if self.encoding:
            self._likelihoods.append(lambda: eb(z, training=False)[1])
        return z_hat

    def gaussian(self, gc: GaussianConditional, y: torch.Tensor | None, scales: torch.Tensor,
                 means: torch.Tensor | None) -> torch.Tensor:
        """Gaussian conditional (compressai: scale-table index per element, symbols around means)."""
        indexes = scale_indexes(gc, scales)
        symbols = gc.quantize(y, "symbols", means) if self.encoding else None
        symbols = self._code(gc, symbols, indexes)
        y_hat = gc.dequantize(symbols, means)
        if self.encoding:
            self._likelihoods.append(lambda: _bounded_likelihood(gc, y_hat, scales, means))
        return y_hat

    def finish(self) -> list[bytes]:
        """Encoder: the flushed streams. Decoder: check every stream re-encodes to itself."""
        if self.encoding:
            streams = []
            for b in range(self.batch):
                encoder = BufferedRansEncoder()
                encoder.encode_with_indexes(*self._one_call(b))
                streams.append(encoder.flush())
            return streams
        for b, data in enumerate(self.streams):
            check = BufferedRansEncoder()
            check.encode_with_indexes(*self._one_call(b))
            if check.flush() != data:
                raise PayloadError(f"{self.codec} payload {self.index + b} ({len(data)} bytes) is corrupt: the decoded "
                                   f"symbols do not re-encode to the received stream (truncated or damaged)")
        return self.streams
