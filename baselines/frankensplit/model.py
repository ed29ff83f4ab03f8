"""FrankenSplit's networks: a tiny device encoder, a compressai entropy model, a token decoder.

The paper (Furutanpey et al., arXiv 2302.10681) replaces the shallow head of a frozen backbone
with a small encoder on the device and a server decoder that reconstructs the head's output; the
frozen tail finishes. Sized here for the 28x28 grey input of the server ViT (4x4 patches, a 7x7
grid): two stride-2 residual blocks take the pixels to the patch grid (28 -> 14 -> 7) and a
stride-1 block maps to the latent, ReLU throughout and no GDN as in the paper (its three stride-2
blocks take 224 to 28; our input is 8x smaller, so one stride-2 block fewer). The decoder maps the
latent grid to one token per patch, adds a learned class token and position embedding, and runs a
few transformer blocks (the paper uses a small Swin stage for the same job) to predict all tokens
of the server ViT after block ``split``, class token included.

Other backbones (``backbone.py`` derives their ``Arch``): one stride-2 encoder block per halving of
the split's stride, the token decoder for a ViT's tokens, ``MapDecoder`` for a CNN's feature map.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from timm.models.vision_transformer import Block
from torch import nn

PRIORS = ("factorized", "hyperprior")

# compressai's default scale table (log-spaced 0.11..256); the hyperprior's CDF index set.
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64


GENERIC_KEYS = ("backbone", "feature", "input_size")


@dataclass(frozen=True)
class Arch:
    """Everything that fixes the network's shapes; stored in the manifest beside the weights.

    ``backbone`` None is the shipped layout (the 28x28 grey ViT: ``grid``, ``tokens``, ``dim``).
    Otherwise ``backbone`` is the server's timm class, ``split`` a timm feature name, ``feature``
    one sample's features there ((C, H, W) maps or (tokens, dim)) and ``input_size`` the model's
    (C, H, W); one stride-2 encoder block per ``channels`` entry (ceil(log2(stride)) of them).
    ``latent_block`` False drops the stride-1 block to ``latent`` (the last stride-2 block then
    outputs the latent, ``channels[-1] == latent``: the paper's 3 -> 48 -> 64 -> 48 encoder).
    """

    prior: str = "factorized"
    split: int | str = 1
    channels: tuple[int, ...] = (32, 48)
    latent: int = 32
    hyper_latent: int = 16
    decoder_blocks: int = 1
    latent_block: bool = True
    tokens: int = 50
    dim: int = 96
    heads: int = 3
    grid: int = 7
    backbone: str | None = None
    feature: tuple[int, ...] | None = None
    input_size: tuple[int, int, int] | None = None

    @property
    def generic(self) -> bool:
        return self.backbone is not None

    @property
    def in_chans(self) -> int:
        return self.input_size[0] if self.input_size is not None else 1

    @property
    def hw(self) -> tuple[int, int]:
        """The latent grid: the input halved (rounding up) once per stride-2 encoder block."""
        if self.input_size is None:
            return (self.grid, self.grid)
        _, h, w = self.input_size
        for _ in self.channels:
            h, w = -(-h // 2), -(-w // 2)
        return (h, w)

    @property
    def tokens_out(self) -> bool:
        """The decoder predicts ViT tokens (else a CNN feature map)."""
        return not self.generic or len(self.feature or ()) == 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        if not self.generic:  # the shipped layout's dict, as its manifest entries hold it (latent block always)
            return {k: v for k, v in d.items() if k not in (*GENERIC_KEYS, "latent_block")}
        d["feature"], d["input_size"] = list(self.feature or ()), list(self.input_size or ())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Arch":
        d = dict(d)
        for key in ("channels", "feature", "input_size"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


class ResidualBlock(nn.Module):
    """conv3x3(stride) - ReLU - conv3x3, plus a 1x1 (strided) skip; ReLU after the sum unless last."""

    def __init__(self, cin: int, cout: int, stride: int, last: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, stride=stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.act = nn.ReLU(inplace=False)
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act(self.conv1(x))) + self.skip(x)
        return out if self.last else self.act(out)


class Encoder(nn.Sequential):
    """Device side: normalised pixels -> latent grid; one stride-2 block per ``arch.channels`` entry,
    then a stride-1 block to the latent (shipped: 1x28x28 -> 32 -> 48 -> latent x 7 x 7; no GDN), or
    none with ``latent_block`` False (the last stride-2 block is then the latent's)."""

    def __init__(self, arch: Arch) -> None:
        widths = [arch.in_chans, *arch.channels]
        pairs = list(zip(widths, widths[1:]))
        if not arch.latent_block:
            super().__init__(*[ResidualBlock(a, b, 2, last=i == len(pairs) - 1) for i, (a, b) in enumerate(pairs)])
            return
        super().__init__(*[ResidualBlock(a, b, 2) for a, b in pairs],
                         ResidualBlock(widths[-1], arch.latent, 1, last=True))


class MapDecoder(nn.Module):
    """Server side for CNN splits: latent grid -> the backbone's C x H/r x W/r features at the split.

    The latent grid already has the feature map's size (the encoder's depth follows the split's
    stride), so no upsampling: a 3x3 conv to C channels, ``decoder_blocks`` residual blocks, a 1x1.
    """

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        c = arch.feature[0]
        self.stem = nn.Sequential(nn.Conv2d(arch.latent, c, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(c, c, 1) for _ in range(arch.decoder_blocks)])
        self.head = nn.Conv2d(c, c, 1)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(y_hat)))


class TokenDecoder(nn.Module):
    """Server side: latent grid -> the server ViT's tokens after block ``split`` (class token first)."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        # a 3x3 conv sees each patch's neighbours; the 1x1 is a per-token MLP (cheap at 7x7)
        self.stem = nn.Sequential(nn.Conv2d(arch.latent, arch.dim, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(arch.dim, arch.dim, 1))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, arch.tokens, arch.dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(arch.dim, arch.heads, mlp_ratio=2.0) for _ in range(arch.decoder_blocks)])
        self.norm = nn.LayerNorm(arch.dim)
        self.head = nn.Linear(arch.dim, arch.dim)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        x = self.stem(y_hat).flatten(2).transpose(1, 2)  # B, patches, dim
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x)))


class HyperAnalysis(nn.Sequential):
    def __init__(self, arch: Arch) -> None:
        super().__init__(nn.Conv2d(arch.latent, arch.latent, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(arch.latent, arch.hyper_latent, 3, stride=2, padding=1))  # 7 -> 4


class HyperSynthesis(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.net = nn.Sequential(
            # 4 -> 7 on the shipped odd grid; output_padding restores an even side (no weights)
            nn.ConvTranspose2d(arch.hyper_latent, arch.latent, 3, stride=2, padding=1,
                               output_padding=tuple(1 - n % 2 for n in arch.hw)), nn.ReLU(),
            nn.Conv2d(arch.latent, arch.latent, 3, padding=1))

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.net(z_hat))  # positive scales


def ste_round(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Round around ``center`` in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x - center) + center - x).detach()


class FrankenSplitNet(nn.Module):
    """Encoder + entropy model + decoder. ``forward`` is the training path (noise for the rate,
    straight-through rounding for the decoder input, so the decoder sees test-time symbols)."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.decoder = TokenDecoder(arch) if arch.tokens_out else MapDecoder(arch)
        if arch.prior == "factorized":
            self.entropy = EntropyBottleneck(arch.latent)
        else:
            self.entropy = EntropyBottleneck(arch.hyper_latent)
            self.h_a = HyperAnalysis(arch)
            self.h_s = HyperSynthesis(arch)
            self.gaussian = GaussianConditional(None)

    # -- training path --------------------------------------------------------------------
    def forward(self, x_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (reconstructed features, bits per image) for a normalised image batch."""
        y = self.encoder(x_norm)
        if self.arch.prior == "factorized":
            _, lik = self.entropy(y)
            medians = self.entropy._get_medians().view(1, -1, 1, 1)
            y_dec = ste_round(y, medians)
            bits = -torch.log2(lik).flatten(1).sum(1)
        else:
            z = self.h_a(y)
            z_tilde, z_lik = self.entropy(z)
            scales = self.h_s(z_tilde)
            _, y_lik = self.gaussian(y, scales)
            y_dec = ste_round(y, torch.zeros_like(y))
            bits = -(torch.log2(z_lik).flatten(1).sum(1) + torch.log2(y_lik).flatten(1).sum(1))
        return self.decoder(y_dec), bits

    # -- coding path (CPU float32, after update()) ----------------------------------------
    def update(self) -> None:
        """Build the quantised CDF tables the range coder needs (compressai ``update``)."""
        self.entropy.update(force=True)
        if self.arch.prior == "hyperprior":
            scale_table = torch.exp(torch.linspace(torch.log(torch.tensor(SCALES_MIN)),
                                                   torch.log(torch.tensor(SCALES_MAX)), SCALES_LEVELS))
            self.gaussian.update_scale_table(scale_table, force=True)

    def compress(self, y: torch.Tensor) -> tuple[list[list[bytes]], torch.Tensor]:
        """Latents -> per-sample strings ([y] or [z, y]) and estimated bits per sample."""
        if self.arch.prior == "factorized":
            _, lik = self.entropy(y, training=False)
            return [[s] for s in self.entropy.compress(y)], -torch.log2(lik).flatten(1).sum(1)
        z = self.h_a(y)
        _, z_lik = self.entropy(z, training=False)
        z_strings = self.entropy.compress(z)
        z_hat = self.entropy.decompress(z_strings, z.shape[-2:])
        scales = self.h_s(z_hat)
        _, y_lik = self.gaussian(y, scales, training=False)
        y_strings = self.gaussian.compress(y, self.gaussian.build_indexes(scales))
        bits = -(torch.log2(z_lik).flatten(1).sum(1) + torch.log2(y_lik).flatten(1).sum(1))
        return [[zs, ys] for zs, ys in zip(z_strings, y_strings)], bits

    def decompress(self, strings: list[list[bytes]]) -> torch.Tensor:
        """Per-sample strings -> dequantised latents (the decoder's input)."""
        h, w = self.arch.hw
        if self.arch.prior == "factorized":
            return self.entropy.decompress([s[0] for s in strings], (h, w))
        z_hat = self.entropy.decompress([s[0] for s in strings], ((h + 1) // 2, (w + 1) // 2))
        scales = self.h_s(z_hat)
        return self.gaussian.decompress([s[1] for s in strings], self.gaussian.build_indexes(scales))

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a stored state dict (without CDF tables), then rebuild the tables."""
        own = self.state_dict()
        missing = sorted(k for k in own if k not in state and not _is_table(k))
        unexpected = sorted(k for k in state if k not in own)
        if missing or unexpected:
            raise KeyError(f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                           f"(e.g. {unexpected[:2]})")
        self.load_state_dict({**{k: v for k, v in own.items() if _is_table(k)}, **state}, strict=True)
        self.update()

    def weights(self) -> dict[str, torch.Tensor]:
        """State dict without the CDF tables (they are rebuilt by ``update`` on load)."""
        return {k: v for k, v in self.state_dict().items() if not _is_table(k)}


def _is_table(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def encoder_stats(net: FrankenSplitNet, input_size: tuple[int, int, int]) -> dict[str, float]:
    """Device-side encoder size: parameters, KB in fp16 (as shipped) and FLOPs for one image."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in net.encoder.parameters())
    device = next(net.encoder.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.encoder(torch.zeros(1, *input_size, device=device))
    return {"params": params, "size_kb_fp16": round(params * 2 / 1024, 1),
            "mflops": round(counter.get_total_flops() / 1e6, 2)}


__all__ = ["Arch", "FrankenSplitNet", "PRIORS", "encoder_stats"]
