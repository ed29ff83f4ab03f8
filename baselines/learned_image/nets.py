"""Network builders for the learned image codecs, sized for small images.

compressai's ``Elic2022Official``/``Elic2022Chandelier`` and ``ScaleHyperprior`` assume RGB photos:
four stride-2 stages in the analysis transform and two more in the hyper branch, so inputs pad to a
multiple of 64. A 28x28 Fashion-MNIST image padded to 64x64 would put three quarters of every
latent on zero padding. These builders keep compressai's classes, layers and entropy models and
only swap the parts that depend on image size or width when asked:

* ``stages``: stride-2 stages of ``g_a``/``g_s`` (official 4). With 3 a 28x28 image pads to 32x32
  and still gives a 4x4 latent (the same grid the official depth gives at 64x64), at a quarter of
  the pixels; the hyper branch keeps its two stages, so inputs pad to ``2**(stages + 2)``.
* ``channels``: 1 for grey-native first/last layers (no capacity spent on three equal planes);
  3 for the official layout (grey inputs are replicated to RGB and the output averaged back).
* ``context``: hidden widths of ELIC's channel-context nets (official ``[224, 128]``; these
  dominate the parameter count of a narrow model, so small models scale them down).

With ``stages=4, channels=3`` and the official context widths the module layout is exactly
compressai's, so official state dicts (N=192, M=320) load unchanged (:func:`infer_elic_arch`).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from compressai.layers import GDN, AttentionBlock
from compressai.models import Elic2022Chandelier, Elic2022Official, ScaleHyperprior
from compressai.models.sensetime import ResidualBottleneckBlock
from compressai.models.utils import conv, deconv

from splitbench.errors import CheckpointError, ConfigError

OFFICIAL_CONTEXT = (224, 128)
ELIC_VARIANTS = {"official": Elic2022Official, "chandelier": Elic2022Chandelier}
# buffers that compressai derives from the weights with update(); never shipped (the Gaussian
# conditional's CDF table alone is ~800 kB), recomputed on load so both ends agree exactly.
DERIVED_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def elic_groups(M: int) -> list[int]:
    """ELIC's uneven channel groups [16, 16, 32, 64, M-128] of M=320, scaled to any M >= 20."""
    if M == 320:
        return [16, 16, 32, 64, 192]
    head = [M // 20, M // 20, M // 10, M // 5]
    if M < 20 or min(head) < 1:
        raise ConfigError(f"codec.M must be >= 20 for ELIC's five channel groups, got {M}")
    return [*head, M - sum(head)]


def _elic_g_a(channels: int, N: int, M: int, stages: int) -> nn.Sequential:
    # Official order (stages=4): conv, 3xRBB, conv, 3xRBB, attn, conv, 3xRBB, conv->M, attn.
    layers: list[nn.Module] = []
    for i in range(stages):
        last = i == stages - 1
        layers.append(conv(channels if i == 0 else N, M if last else N, kernel_size=5, stride=2))
        if not last:
            layers += [ResidualBottleneckBlock(N, N) for _ in range(3)]
            if i == 1:
                layers.append(AttentionBlock(N))
    layers.append(AttentionBlock(M))
    return nn.Sequential(*layers)


def _elic_g_s(channels: int, N: int, M: int, stages: int) -> nn.Sequential:
    # Official order (stages=4): attn, deconv, 3xRBB, deconv, attn, 3xRBB, deconv, 3xRBB, deconv->C.
    layers: list[nn.Module] = [AttentionBlock(M)]
    for i in range(stages):
        last = i == stages - 1
        layers.append(deconv(M if i == 0 else N, channels if last else N, kernel_size=5, stride=2))
        if not last:
            if i == 1:
                layers.append(AttentionBlock(N))
            layers += [ResidualBottleneckBlock(N, N) for _ in range(3)]
    return nn.Sequential(*layers)


def build_elic(N: int, M: int, variant: str = "official", stages: int = 4, channels: int = 3,
               context: tuple[int, int] | list[int] = OFFICIAL_CONTEXT,
               groups: list[int] | None = None) -> nn.Module:
    """compressai ELIC with the size-dependent parts swapped as described in the module doc."""
    if variant not in ELIC_VARIANTS:
        raise ConfigError(f"codec.variant {variant!r} is not an ELIC variant; valid: {', '.join(ELIC_VARIANTS)}")
    _check_arch(N=N, M=M, stages=stages, channels=channels)
    context = tuple(int(c) for c in context)
    if len(context) != 2 or min(context) < 1:
        raise ConfigError(f"codec.context must be two positive hidden widths, got {list(context)}")
    groups = list(groups) if groups else elic_groups(M)
    net = ELIC_VARIANTS[variant](N=N, M=M, groups=groups)
    if (stages, channels) != (4, 3):
        net.g_a = _elic_g_a(channels, N, M, stages)
        net.g_s = _elic_g_s(channels, N, M, stages)
    if context != OFFICIAL_CONTEXT:
        cg = net.latent_codec["y"]
        for k in range(1, len(groups)):
            in_ch = cg.channel_context[f"y{k}"][0].in_channels  # variant-specific (all or first+last)
            cg.channel_context[f"y{k}"] = nn.Sequential(
                conv(in_ch, context[0], kernel_size=5, stride=1), nn.ReLU(inplace=True),
                conv(context[0], context[1], kernel_size=5, stride=1), nn.ReLU(inplace=True),
                conv(context[1], groups[k] * 2, kernel_size=5, stride=1))
    net.arch = dict(N=N, M=M, variant=variant, stages=stages, channels=channels, context=list(context))
    return net


def build_bmshj2018(N: int, M: int, stages: int = 4, channels: int = 3) -> nn.Module:
    """compressai ``ScaleHyperprior`` (bmshj2018-hyperprior), optionally shallower / grey-native."""
    _check_arch(N=N, M=M, stages=stages, channels=channels)
    net = ScaleHyperprior(N, M)
    if (stages, channels) != (4, 3):
        g_a: list[nn.Module] = []
        g_s: list[nn.Module] = []
        for i in range(stages):
            last = i == stages - 1
            g_a.append(conv(channels if i == 0 else N, M if last else N))
            g_s.append(deconv(M if i == 0 else N, channels if last else N))
            if not last:
                g_a.append(GDN(N))
                g_s.append(GDN(N, inverse=True))
        net.g_a, net.g_s = nn.Sequential(*g_a), nn.Sequential(*g_s)
    net.arch = dict(N=N, M=M, stages=stages, channels=channels)
    return net


def _check_arch(**values: int | None) -> None:
    """One-line errors for out-of-range sizes; None (stages, channels: from the task model) passes."""
    limits = {"N": (1, 1024), "M": (1, 1024), "stages": (1, 6), "channels": (1, 3)}
    for key, value in values.items():
        if value is None and key in ("stages", "channels"):
            continue
        low, high = limits[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"codec.{key} must be an integer in [{low}, {high}], got {value!r}")
    if values.get("channels") == 2:
        raise ConfigError("codec.channels must be 1 (grey) or 3 (RGB), got 2")


def pad_multiple(net: nn.Module) -> int:
    """Input sides pad to this multiple: g_a's stages plus the hyper branch's two."""
    return 2 ** (net.arch["stages"] + 2)


# -- state dicts ------------------------------------------------------------------------------------
def shippable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The learned weights only: every buffer of these models is either a constructor constant
    (bounds, GDN pedestals: some underflow in fp16) or a CDF table update() derives from weights."""
    return {k: v.detach() for k, v in net.named_parameters()}


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load every parameter (buffers only where given, CDF tables never), then update(force=True)."""
    state = {k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}
    params = {k for k, _ in net.named_parameters()}
    try:
        missing, unexpected = nn.Module.load_state_dict(net, state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{source} does not fit {type(net).__name__} {net.arch}: "
                              f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}") from None
    missing = [k for k in missing if k in params]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {type(net).__name__} {net.arch}: "
                              f"{len(missing)} missing weights (e.g. {missing[:2]}), {len(unexpected)} "
                              f"unexpected keys (e.g. {unexpected[:2]})")
    net.update(force=True)
    return net.eval()


def _direct_convs(state: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.weight$")
    found = sorted((int(m.group(1)), v) for k, v in state.items() if (m := pattern.match(k)) and v.ndim == 4)
    return [v for _, v in found]


def infer_elic_arch(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """N, M, stages, channels, groups and context widths from the weight shapes (any ELIC layout)."""
    try:
        convs = _direct_convs(state, "g_a")
        groups, k = [], 0
        while f"latent_codec.y.latent_codec.y{k}.context_prediction.weight" in state:
            groups.append(int(state[f"latent_codec.y.latent_codec.y{k}.context_prediction.weight"].shape[1]))
            k += 1
        ctx = (int(state["latent_codec.y.channel_context.y1.0.weight"].shape[0]),
               int(state["latent_codec.y.channel_context.y1.2.weight"].shape[0]))
        return dict(N=int(convs[0].shape[0]), M=int(convs[-1].shape[0]), stages=len(convs),
                    channels=int(convs[0].shape[1]), groups=groups, context=list(ctx))
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{source} is not an ELIC state dict (compressai Elic2022Official "
                              f"layout expected; missing {err})") from None


def infer_bmshj_arch(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    convs = _direct_convs(state, "g_a")
    if not convs or "entropy_bottleneck.quantiles" not in state:
        raise CheckpointError(f"{source} is not a bmshj2018-hyperprior (ScaleHyperprior) state dict")
    return dict(N=int(convs[0].shape[0]), M=int(convs[-1].shape[0]), stages=len(convs),
                channels=int(convs[0].shape[1]))


def elic_from_state(state: dict[str, torch.Tensor], source: str, prefer: str = "official") -> nn.Module:
    """Build the ELIC that fits ``state`` (trying ``prefer`` first, then the other variant)."""
    arch = infer_elic_arch(state, source)
    errors = []
    for variant in (prefer, *[v for v in ELIC_VARIANTS if v != prefer]):
        net = build_elic(arch["N"], arch["M"], variant, arch["stages"], arch["channels"], arch["context"],
                         arch["groups"])
        try:
            return load_weights(net, state, source)
        except CheckpointError as err:
            errors.append(str(err))
    raise CheckpointError(errors[0])


def bmshj_from_state(state: dict[str, torch.Tensor], source: str) -> nn.Module:
    arch = infer_bmshj_arch(state, source)
    return load_weights(build_bmshj2018(**arch), state, source)
