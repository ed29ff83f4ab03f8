"""``elic`` and ``bmshj2018``: learned image codecs (compressai architectures) in front of the server ViT.

The device pads the image, runs the analysis transform ``g_a`` (the ``device_forward`` model stage,
FLOP-counted) and entropy-codes the latents (``encode``); the server entropy-decodes (``decode``)
and runs the synthesis transform ``g_s`` plus the same server ViT every image codec feeds
(``server_forward``). The wire carries one rANS stream per image (see ``stream.py``) and nothing
else: the image size is agreed in advance (the task model's input size), as for ``raw``.

Determinism: every image is coded on its own (batch of one) on the CPU in float32, so its bytes do
not depend on the batch it arrived in, and the CDF tables are rebuilt from the shipped fp16
weights on load. Encoder and decoder run the same code path (``_code_latents``) and are checked by
golden hashes in tests/test_learned_image.py. Bitstreams are portable across processes on one
machine; across different CPUs/BLAS builds float differences in the entropy parameters can break
decoding (compressai #279, #309), as for every float learned codec.

Devices: only ``g_a`` (device) and ``g_s`` (server) move with ``runtime.device``
(:meth:`device_modules`). The hyper-analysis and -synthesis, ELIC's channel and checkerboard
context models, the entropy bottleneck, the Gaussian conditional and its CDF tables are never
moved: ``encode``/``decode`` (``_code_latents``) run them on the CPU in float32 on the CPU latent
``device_forward`` returns, so the CDF indexes that both ends compute from the same quantised
symbols are the same whichever device ran ``g_a`` or ``g_s`` (the cross-device mismatch of
compressai #279/#309/#320 cannot happen between a GPU and a CPU half of one machine).

PSNR: the server reconstructs the image from the real bytes anyway; to score it against the
original without sending the original, the encoder leaves the original in this process's memory
(a measurement side channel, never on the wire) and ``server_forward`` writes ``psnr`` into that
payload's extras when it reconstructs it. So no extra decode runs, and the timings hold only the
real stages plus a ~10 us PSNR per image in ``server_forward``. When the decoder runs in another
process (live mode) there is no original and ``psnr`` is missing (NaN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compressai.entropy_models import EntropyBottleneck

from splitbench.codecs import Codec, Payload, register_codec
from splitbench.codecs.rans import max_stream_bytes, table_max_value
from splitbench.errors import ConfigError, PayloadError
from splitbench.metrics import psnr
from splitbench.options import OneOf, Positive, Range
from splitbench.zoo import model_points_hint

from . import nets
from .stream import CdfTable, LatentCoder



@dataclass
class DeviceOutput:
    """What ``device_forward`` hands to ``encode``: one latent per image, and the images (PSNR)."""

    latents: list[torch.Tensor]
    images: torch.Tensor


@dataclass
class Decoded:
    """What ``decode`` hands to ``server_forward``: dequantised latents and their payloads."""

    latents: list[torch.Tensor]
    blobs: list[bytes]


def model_arch(arch: dict[str, Any], input_size: tuple[int, int, int]) -> dict[str, Any]:
    """``arch`` with ``channels``/``stages`` left null taken from the task model's input (C, H, W):
    its channel count, and 3 stride-2 stages below 64 pixels a side (28x28 pads to 32, as shipped),
    else the official 4 (sides pad to a multiple of 64: 224 -> 256, as compressai pads)."""
    c, h, w = input_size
    out = dict(arch)
    if out.get("channels") is None:
        out["channels"] = 1 if c == 1 else 3
    if out.get("stages") is None:
        out["stages"] = 3 if min(h, w) < 64 else 4
    return out


#: (channels, stages) of the embedded grey suite's points, which carry no model in their zoo point
GREY_LAYOUT = (1, 3)


def shipped_name(family: str, lmbda: float, model: str | None = None) -> str:
    """File name of a trained rate point: ``elic_lmbda0.0067`` (grey suite) or, for another model,
    ``bmshj2018_tf_efficientnet_lite0_lmbda0.0067``."""
    return f"{family}_{model.replace('/', '-')}_lmbda{lmbda:g}" if model else f"{family}_lmbda{lmbda:g}"


# declared ranges of the architecture options (nets._check_arch also refuses channels=2)
Width = Annotated[int, Range(1, 1024)]
Stages = Annotated[int, Range(1, 6)]
Channels = Annotated[int, Range(1, 3)]


class LearnedImageCodec(Codec):
    """Shared device/wire/server halves; subclasses give the network and its latent coding order."""

    sends_image = True
    extra_columns: ClassVar[tuple[str, ...]] = ("psnr",)
    family: ClassVar[str] = ""
    train_arch_keys: ClassVar[tuple[str, ...]] = ()
    net: nn.Module

    # -- construction ------------------------------------------------------------------------------
    def _setup(self, lmbda: float, checkpoint: str | None, arch: dict[str, Any]) -> None:
        self.lmbda = float(lmbda)  # declared > 0 (the constructors' signatures)
        self.checkpoint = checkpoint
        self.arch = arch
        weights = self.weights(self.family, {"lmbda": self.lmbda}, checkpoint, f"codec.lmbda={self.lmbda:g}")
        # null channels/stages: the weights fix them, bind() checks they fit the task model
        weights.check_arch(arch, tuple(k for k in self.train_arch_keys if arch.get(k) is not None), family=self.family)
        self.net = self.net_from_state(weights.state, weights.source)
        self._weights = weights.fingerprint
        self._pending: dict[bytes, list[tuple[torch.Tensor, dict[str, float]]]] = {}
        self._freeze()

    def _freeze(self) -> None:
        """Inference only: no parameter needs grad (FLOP counting's module hooks trip over GDN's
        custom autograd functions when weights require grad under inference_mode)."""
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    # subclass hooks
    def net_from_state(self, state: dict[str, torch.Tensor], source: str) -> nn.Module:
        raise NotImplementedError

    def _code_latents(self, coder: LatentCoder, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # -- shapes --------------------------------------------------------------------------------------
    def bind(self, task: Any) -> None:
        super().bind(task)
        c, h, w = task.input_size
        if c not in (1, 3) or (c == 3 and self.net.arch["channels"] == 1):
            raise ConfigError(f"{self.family} needs {self.net.arch['channels']}-channel images for these weights; model "
                              f"{task.name!r} takes {c} channels: train a {c}-channel point (python -m splitbench.train "
                              f"codec={self.family} model=...) and pass codec.checkpoint=PATH"
                              f"{model_points_hint(self.family, task.name)}")
        mult = nets.pad_multiple(self.net)
        self._hw = (h, w)
        self._padded = (math.ceil(h / mult) * mult, math.ceil(w / mult) * mult)
        down = 2 ** self.net.arch["stages"]
        self._y_shape = torch.Size((1, self.net.arch["M"], self._padded[0] // down, self._padded[1] // down))
        self._tables = {id(m): CdfTable.of(m) for m in self.net.modules()
                        if hasattr(m, "_quantized_cdf") and m._offset.numel() > 0}
        y, z = self._shapes(self._entropy_bottleneck(), 1)
        self._n_symbols = y.numel() + z.numel()
        self._max_bytes = self.max_payload_bytes()

    def device_modules(self) -> list[nn.Module]:
        """The transforms only; every entropy-parameter network stays on the CPU (module doc)."""
        return [self.net.g_a, self.net.g_s]

    def _entropy_bottleneck(self) -> nn.Module:
        """The z entropy model (its channel count fixes the hyper-latent shape)."""
        return next(m for m in self.net.modules() if isinstance(m, EntropyBottleneck))

    def max_payload_bytes(self) -> int:
        """The longest stream the encoder can flush: every y and z symbol at the worst-case cost
        (16 bits + escape chunks; symbols are range-checked on both ends, see codecs/rans.py)."""
        tables = list(self._tables.values())
        max_value = max(table_max_value(t.offsets, t.lengths) for t in tables)
        return max_stream_bytes(self._n_symbols, max_value)

    def _shapes(self, eb: nn.Module, batch: int) -> tuple[torch.Size, torch.Size]:
        """(y, z) latent shapes for ``batch`` images of the agreed size."""
        y = torch.Size((batch, *self._y_shape[1:]))
        return y, torch.Size((batch, eb.channels, y[2] // 4, y[3] // 4))

    # -- device side -------------------------------------------------------------------------------------
    def to_network(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N,C,H,W -> [0,1] floats, channels adapted, zero-padded (centred) to the multiple."""
        x = images.float() / 255.0
        if x.shape[1] == 1 and self.net.arch["channels"] == 3:
            x = x.expand(-1, 3, -1, -1)
        (h, w), (hp, wp) = self._hw, self._padded
        top, left = (hp - h) // 2, (wp - w) // 2
        return F.pad(x, (left, wp - w - left, top, hp - h - top))

    def from_network(self, x_hat: torch.Tensor) -> torch.Tensor:
        """Synthesis output -> the uint8 image a decoder would display (crop, channels, round)."""
        (h, w), (hp, wp) = self._hw, self._padded
        top, left = (hp - h) // 2, (wp - w) // 2
        x = x_hat[..., top:top + h, left:left + w].clamp(0, 1)
        if self.task.input_size[0] == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        return (x * 255.0).round().to(torch.uint8)

    def _check_images(self, images: torch.Tensor) -> None:
        if tuple(images.shape[1:]) != tuple(self.task.input_size):
            raise ConfigError(f"{self.family} expects images of {tuple(self.task.input_size)}, got "
                              f"{tuple(images.shape[1:])}")

    def device_forward(self, images: torch.Tensor) -> DeviceOutput:
        """g_a, one image at a time (bytes must not depend on which batch an image came in), on the
        device; the latents come back to the CPU, where they are entropy-coded."""
        self._check_images(images)
        x = self.to_network(images.to(self.device))
        return DeviceOutput([self.net.g_a(x[i:i + 1]).cpu() for i in range(len(x))], images)

    def _encode_latents(self, y: torch.Tensor) -> tuple[list[bytes], LatentCoder]:
        """The streams, and the coder that can still estimate their bits (on demand)."""
        coder = LatentCoder(self.family, self._tables, batch=len(y))
        self._code_latents(coder, y)
        return coder.finish(), coder

    def _decode_latents(self, blobs: list[bytes], index: int = 0) -> torch.Tensor:
        """Latents of ``blobs`` (batch positions ``index``, ``index + 1``, ... for error messages)."""
        coder = LatentCoder(self.family, self._tables, streams=blobs, max_bytes=self._max_bytes,
                            n_symbols=self._n_symbols, index=index)
        try:
            y_hat = self._code_latents(coder, None)
        except PayloadError:
            raise
        except (RuntimeError, ValueError, OverflowError) as err:
            where = f"payload {index}" if len(blobs) == 1 else f"payloads {index}..{index + len(blobs) - 1}"
            raise PayloadError(f"{self.family} {where} is corrupt: {str(err).splitlines()[0]}") from None
        coder.finish()
        return y_hat

    def encode(self, features: DeviceOutput) -> list[Payload]:
        payloads = []
        for y, image in zip(features.latents, features.images):
            [data], coder = self._encode_latents(y)
            payload = Payload(data, estimated_bits=lambda coder=coder: coder.estimated_bits[0])
            self._remember(payload, image)
            payloads.append(payload)
        return payloads

    def _remember(self, payload: Payload, image: torch.Tensor) -> None:
        self._pending.setdefault(payload.data, []).append((image, payload.extras))
        while len(self._pending) > 4096:  # payloads never decoded here (e.g. sent elsewhere)
            del self._pending[next(iter(self._pending))]

    # -- server side -------------------------------------------------------------------------------------
    def decode(self, data: list[bytes]) -> Decoded:
        """Entropy decoding, one payload at a time (each its own stream)."""
        return Decoded([self._decode_latents([blob], i) for i, blob in enumerate(data)], [bytes(b) for b in data])

    def reconstruct(self, decoded: Decoded) -> torch.Tensor:
        """The decoded uint8 images (N,C,H,W); fills in ``psnr`` for payloads encoded here."""
        images = torch.cat([self.from_network(self.net.g_s(y_hat.to(self.device))) for y_hat in decoded.latents])
        for blob, image in zip(decoded.blobs, images):
            waiting = self._pending.get(blob)
            if waiting:
                original, extras = waiting.pop()  # the latest encode of these bytes (stale ones stay)
                extras["psnr"] = psnr(image.cpu(), original)
                if not waiting:
                    del self._pending[blob]
        return images

    # -- batched evaluation (training) --------------------------------------------------------------------
    @torch.inference_mode()
    def round_trip_batched(self, images: torch.Tensor) -> tuple[list[bytes], list[float], torch.Tensor]:
        """Whole-batch g_a, coding, decoding and g_s: (bytes, estimated bits, decoded uint8 images).

        Real streams, really decoded, ~20x faster than one image at a time; the bytes can differ
        from the per-image path only where batched float arithmetic differs (training checks a
        sample of images for identical bytes and records the result in the manifest).
        """
        self._check_images(images)
        blobs, coder = self._encode_latents(self.net.g_a(self.to_network(images.to(self.device))).cpu())
        bits = coder.estimated_bits
        decoded = self.from_network(self.net.g_s(self._decode_latents(blobs).to(self.device)))
        return blobs, bits, decoded.cpu()

    def server_forward(self, features: Decoded) -> torch.Tensor:
        return self.task(self.reconstruct(features))

    # -- training -----------------------------------------------------------------------------------------
    @classmethod
    def trainer(cls, cfg: Any) -> Any:
        """``python -m splitbench.train codec=<family> codec.lmbda=...`` (see train.py)."""
        from .train import LearnedImageTrainer

        return LearnedImageTrainer(cls, cfg)

    # -- description ---------------------------------------------------------------------------------------
    def rate_point(self) -> str:
        if self.checkpoint is not None:
            a = self.net.arch
            return f"ckpt N{a['N']}/M{a['M']}"
        return f"lmbda={self.lmbda:g}"

    def fingerprint(self) -> dict[str, Any]:
        return {"weights": self._weights, "arch": self.net.arch}


def _context(value: Any) -> list[int]:
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        out = []
    if len(out) != 2:
        raise ConfigError(f"codec.context must be a list of two hidden widths like [32, 24], got {value!r}")
    return out


@register_codec("elic")
class ElicCodec(LearnedImageCodec):
    """ELIC (He et al., CVPR 2022) via compressai ``Elic2022Official`` / ``Elic2022Chandelier``.

    Options: ``lmbda`` picks a shipped rate point; ``N``, ``M``, ``stages``, ``channels``,
    ``context`` and ``variant`` are the architecture a training run builds and a shipped checkpoint
    must match (see nets.py for why the shipped ones are narrower and one stage shallower than the
    paper's). ``checkpoint=PATH`` loads any ELIC state dict instead, official compressai layout
    (N=192, M=320, RGB) included; the architecture is then read from the weights and these options
    are not used. ``train`` holds training knobs (``python -m splitbench.train codec=elic``).
    """
    client_options = frozenset({"lmbda"})  # picks a shipped rate point; N/M/stages/checkpoint are fixed

    family = "elic"
    train_arch_keys = ("N", "M", "variant", "stages", "channels", "context")

    def __init__(self, lmbda: Annotated[float, Positive] = 0.0067, checkpoint: str | None = None,
                 variant: Annotated[str, OneOf(*nets.ELIC_VARIANTS)] = "official",
                 N: Width = 32, M: Width = 48, stages: Stages | None = None, channels: Channels | None = None,
                 context: list[int] | tuple[int, int] = (32, 24), train: dict[str, Any] | None = None) -> None:
        arch = dict(N=N, M=M, variant=variant, stages=stages, channels=channels, context=_context(context))
        nets._check_arch(N=N, M=M, stages=stages, channels=channels)
        self.variant = variant
        self._setup(lmbda, checkpoint, arch)

    @staticmethod
    def build(arch: dict[str, Any]) -> nn.Module:
        return nets.build_elic(arch["N"], arch["M"], arch["variant"], arch["stages"], arch["channels"],
                               arch["context"])

    def net_from_state(self, state: dict[str, torch.Tensor], source: str) -> nn.Module:
        return nets.elic_from_state(state, source, prefer=self.variant)

    def _code_latents(self, coder: LatentCoder, y: torch.Tensor | None) -> torch.Tensor:
        """ELIC's decoding order: z, then per channel group the checkerboard anchors, then non-anchors.

        Mirrors compressai's HyperpriorLatentCodec / ChannelGroupsLatentCodec /
        CheckerboardLatentCodec ``compress`` step for step, with this module's single stream.
        """
        lc = self.net.latent_codec
        hyper, groups_codec = lc["hyper"], lc["y"]
        eb = hyper.entropy_bottleneck
        z = hyper.h_a(y) if y is not None else None
        y_shape, z_shape = self._shapes(eb, coder.batch)
        side = hyper.h_s(coder.bottleneck(eb, z, z_shape))
        y_hat = side.new_zeros(y_shape)
        y_hat_groups = y_hat.split(groups_codec.groups, dim=1)  # views into y_hat
        y_groups = y.split(groups_codec.groups, dim=1) if y is not None else None
        for k in range(len(groups_codec.groups)):
            params = groups_codec._get_ctx_params(k, side, y_hat_groups)
            cb = groups_codec.latent_codec[f"y{k}"]
            gc_codec = cb.latent_codec["y"]
            side_halves = cb.unembed(params)
            y_halves = cb.unembed(y_groups[k]) if y_groups is not None else None
            hat_halves = side.new_zeros((2, *y_hat_groups[k].shape[:3], y_hat_groups[k].shape[3] // 2))
            for i in range(2):  # 0: anchors (no spatial context), 1: non-anchors
                ctx = cb.unembed(cb.context_prediction(cb.embed(hat_halves)))[i]
                if i == 0:
                    ctx = cb._mask_all(ctx)
                gaussian = gc_codec.entropy_parameters(cb.entropy_parameters(cb.merge(ctx, side_halves[i])))
                scales, means = gc_codec._chunk(gaussian)
                hat_halves[i] = coder.gaussian(gc_codec.gaussian_conditional,
                                               y_halves[i] if y_halves is not None else None, scales, means)
            y_hat_groups[k][:] = cb.embed(hat_halves)
        return y_hat


@register_codec("bmshj2018")
class Bmshj2018Codec(LearnedImageCodec):
    """Ballé et al. 2018 scale hyperprior (compressai ``ScaleHyperprior``, bmshj2018-hyperprior).

    The lighter reference: factorized z, zero-mean Gaussian y, GDN transforms, no context model.
    Options as for ``elic`` (``N``, ``M``, ``stages``, ``channels``; ``checkpoint=PATH`` for any
    ScaleHyperprior state dict, e.g. compressai's zoo weights where a user has them).
    """
    client_options = frozenset({"lmbda"})  # picks a shipped rate point; N/M/stages/checkpoint are fixed

    family = "bmshj2018"
    train_arch_keys = ("N", "M", "stages", "channels")

    def __init__(self, lmbda: Annotated[float, Positive] = 0.0067, checkpoint: str | None = None,
                 N: Width = 32, M: Width = 48, stages: Stages | None = None, channels: Channels | None = None,
                 train: dict[str, Any] | None = None) -> None:
        nets._check_arch(N=N, M=M, stages=stages, channels=channels)
        self._setup(lmbda, checkpoint, dict(N=N, M=M, stages=stages, channels=channels))

    @staticmethod
    def build(arch: dict[str, Any]) -> nn.Module:
        return nets.build_bmshj2018(arch["N"], arch["M"], arch["stages"], arch["channels"])

    def net_from_state(self, state: dict[str, torch.Tensor], source: str) -> nn.Module:
        return nets.bmshj_from_state(state, source)

    def _code_latents(self, coder: LatentCoder, y: torch.Tensor | None) -> torch.Tensor:
        """z (factorized), then y with scales from h_s(z_hat) (compressai ScaleHyperprior.compress)."""
        eb = self.net.entropy_bottleneck
        z = self.net.h_a(torch.abs(y)) if y is not None else None
        scales = self.net.h_s(coder.bottleneck(eb, z, self._shapes(eb, coder.batch)[1]))
        return coder.gaussian(self.net.gaussian_conditional, y, scales, None)

