"""Real bitstreams for TOFC: one rANS stream per image through compressai's coder.

The stream holds, in order, the hyper-latent symbols (EntropyBottleneck CDFs), the expert index of
every token (a uniform CDF over the n_e experts; absent when n_e = 1) and the token symbols
(conditional CDF row chosen by the decoded scale). One ``BufferedRansEncoder`` stream instead of
one string per part saves the coder's 8-byte flush per part; the decoder reads the parts in the
same order with ``RansDecoder.decode_stream``.

The payload is ``check (2 bytes) + stream``. ``check`` is CRC-32 (low 16 bits) of the
checkpoint's hash and the stream, so truncated, corrupted or foreign (another checkpoint's)
payloads fail with a PayloadError before the rANS decoder sees them; the decoder also gets the
stream zero-padded by the proven read bound of splitbench.codecs.rans, so even bytes that pass the
check by chance cannot make it read past its buffer, and decoded symbols are range-checked. A
payload longer than the encoder can produce (:meth:`TokenCoder.max_payload_bytes`) is rejected
before anything else.

Entropy parameters are computed on CPU in float32 *per image* with the same tensor shapes on both
sides (encoder and decoder run the identical ``expert_params`` on the identical ``z_hat``), which
keeps the CDF choice bit-exact between the two ends (CompressAI #279/#309).
"""
from __future__ import annotations

import zlib

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models.entropy_models import pmf_to_quantized_cdf

from splitbench.codecs.rans import check_latent, max_stream_bytes, read_padding, table_max_value
from splitbench.errors import PayloadError

from .entropy import SelectiveHyperprior

CHECK_BYTES = 2
MAX_SYMBOL = 1 << 20  # |decoded symbol| above this can only come from a bad payload


class _Table:
    """CDF rows of one part, trimmed to their lengths (pybind copies every row on every call)."""

    def __init__(self, cdf: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor) -> None:
        self.lengths = lengths.reshape(-1).int().tolist()
        self.rows = [row[:n] for row, n in zip(cdf.int().tolist(), self.lengths)]
        self.offsets = offsets.reshape(-1).int().tolist()

    def subset(self, indexes: list[int]) -> tuple[list[int], list[list[int]], list[int], list[int]]:
        """Only the rows these symbols use, with the indexes remapped to them."""
        used = sorted(set(indexes))
        where = {r: i for i, r in enumerate(used)}
        return ([where[i] for i in indexes], [self.rows[r] for r in used],
                [self.lengths[r] for r in used], [self.offsets[r] for r in used])


class TokenCoder:
    """Encode/decode the (T, dim) tokens of one image with a trained SelectiveHyperprior."""

    def __init__(self, model: SelectiveHyperprior, tag: bytes, codec: str = "tofc") -> None:
        model.update()
        self.model = model.eval()
        self.tag = tag
        self.codec = codec
        eb, cond = model.bottleneck, model.conditional
        self.z_table = _Table(eb._quantized_cdf, eb._cdf_length, eb._offset)
        self.y_table = _Table(cond._quantized_cdf, cond._cdf_length, cond._offset)
        n = model.n_experts
        pmf = torch.tensor([1.0 / n] * n + [1e-6])  # + compressai's overflow bin, never used
        self.e_table = _Table(pmf_to_quantized_cdf(pmf, 16)[None], torch.tensor([n + 2]), torch.tensor([0]))

    def _indexes(self, scale: torch.Tensor) -> torch.Tensor:
        """CDF row per symbol: the smallest table scale >= the (lower-bounded) scale. The same
        rows as compressai's ``build_indexes`` (a 64-step Python loop) in one searchsorted."""
        cond = self.model.conditional
        return torch.searchsorted(cond.scale_table[:-1], cond.lower_bound_scale(scale).contiguous())

    def _symbols_per_token(self) -> int:
        m = self.model
        channels = m.bottleneck.channels if hasattr(m.bottleneck, "channels") else m.h_a[-1].out_features
        return channels + 1 + m.dim  # z symbols, the expert index, the token symbols

    def max_payload_bytes(self, n_tokens: int) -> int:
        """Check bytes + the longest rANS stream for ``n_tokens`` tokens (codecs/rans.py)."""
        max_value = max(table_max_value(t.offsets, t.lengths) for t in (self.z_table, self.y_table, self.e_table))
        return CHECK_BYTES + max_stream_bytes(n_tokens * self._symbols_per_token(), max_value)

    def _check(self, stream: bytes) -> bytes:
        return (zlib.crc32(self.tag + stream) & 0xFFFF).to_bytes(CHECK_BYTES, "big")

    @torch.no_grad()
    def encode(self, tokens: torch.Tensor) -> tuple[bytes, float, torch.Tensor]:
        """(T, dim) tokens -> (payload, estimated bits, expert index per token)."""
        m = self.model
        t = tokens.shape[0]
        y = m.to_latent(tokens.float())
        z = m.h_a(y)
        medians = m.bottleneck.quantiles[:, 0, 1]
        z_sym = torch.round(z - medians).int()
        z_hat = z_sym.float() + medians
        mu_all, scale_all = m.expert_params(z_hat)
        experts = m.router(y).argmax(-1) if m.n_experts > 1 else torch.zeros(t, dtype=torch.long)
        rows = torch.arange(t)
        mu, scale = mu_all[rows, experts], scale_all[rows, experts]
        indexes = self._indexes(scale)
        y_sym = torch.round(y - mu).int()
        check_latent(z_sym, self.codec)  # out-of-range symbols could hang compressai's encoder
        check_latent(y_sym, self.codec)

        enc = BufferedRansEncoder()
        z_idx = torch.arange(z.shape[1]).repeat(t).tolist()
        enc.encode_with_indexes(z_sym.reshape(-1).tolist(), *self.z_table.subset(z_idx))
        if m.n_experts > 1:
            enc.encode_with_indexes(experts.tolist(), *self.e_table.subset([0] * t))
        enc.encode_with_indexes(y_sym.reshape(-1).tolist(), *self.y_table.subset(indexes.reshape(-1).tolist()))
        stream = enc.flush()

        _, z_lik = m.bottleneck(z_hat, training=False)
        bits = float(-torch.log2(z_lik).sum()) + float(m.y_bits(y_sym.float() + mu, scale, mu).sum())
        if m.n_experts > 1:
            bits += t * torch.log2(torch.tensor(float(m.n_experts))).item()
        return self._check(stream) + stream, bits, experts

    @torch.no_grad()
    def decode(self, payload: bytes, n_tokens: int, index: int = 0) -> torch.Tensor:
        """Payload -> (n_tokens, dim) tokens; PayloadError on anything that is not our stream."""
        limit = self.max_payload_bytes(n_tokens)
        if len(payload) > limit:
            raise PayloadError(f"{self.codec} payload {index} ({len(payload)} bytes) is corrupt: longer than the "
                               f"{limit} bytes this codec's encoder can produce")
        if len(payload) <= CHECK_BYTES:
            raise PayloadError(f"{self.codec} payload {index} is {'empty' if not payload else 'truncated'} "
                               f"({len(payload)} bytes; a valid one has a {CHECK_BYTES}-byte check + stream)")
        check, stream = payload[:CHECK_BYTES], payload[CHECK_BYTES:]
        if len(stream) % 4 or check != self._check(stream):
            raise PayloadError(f"{self.codec} payload {index} ({len(payload)} bytes) fails its integrity check: "
                               f"truncated, corrupted, or coded with another checkpoint / rate point")
        m = self.model
        channels = self._symbols_per_token() - 1 - m.dim
        dec = RansDecoder()  # zero pad: reads never leave the buffer (codecs/rans.py)
        dec.set_stream(stream + read_padding(n_tokens * self._symbols_per_token(), len(stream)))

        z_idx = torch.arange(channels).repeat(n_tokens).tolist()
        z_sym = self._symbols(dec.decode_stream(*self.z_table.subset(z_idx)), index)
        medians = m.bottleneck.quantiles[:, 0, 1]
        z_hat = z_sym.float().reshape(n_tokens, channels) + medians
        mu_all, scale_all = m.expert_params(z_hat)
        if m.n_experts > 1:
            experts = self._symbols(dec.decode_stream(*self.e_table.subset([0] * n_tokens)), index).long()
            if experts.min() < 0 or experts.max() >= m.n_experts:
                raise PayloadError(f"{self.codec} payload {index} is corrupt: expert index out of range")
        else:
            experts = torch.zeros(n_tokens, dtype=torch.long)
        rows = torch.arange(n_tokens)
        mu, scale = mu_all[rows, experts], scale_all[rows, experts]
        indexes = self._indexes(scale).reshape(-1).tolist()
        y_sym = self._symbols(dec.decode_stream(*self.y_table.subset(indexes)), index)
        y_hat = y_sym.float().reshape(n_tokens, m.dim) + mu
        return m.from_latent(y_hat)

    def _symbols(self, values: list[int], index: int) -> torch.Tensor:
        out = torch.tensor(values, dtype=torch.int64)
        if out.numel() and out.abs().max() > MAX_SYMBOL:
            raise PayloadError(f"{self.codec} payload {index} is corrupt: decoded symbol out of range")
        return out
