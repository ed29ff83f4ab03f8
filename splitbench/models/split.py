"""Split points inside timm backbones: the device runs ``head``, the server runs ``tail``.

timm exposes *where* a backbone can be cut (``model.feature_info``: module name, channels and
reduction per stage, the names ``forward_intermediates`` takes) but has no "run from stage k"
call. Every supported family's ``forward_features`` is a plain sequence of modules, so a split is
that sequence cut in two: ``head`` = the steps up to and including the named feature module,
``tail`` = the remaining steps plus ``forward_head``. ``tail(head(x)) == model(x)`` is tested for
each family.

Supported families (timm classes): VisionTransformer (ViT, DeiT; tokens, class token first),
ResNet, EfficientNet (incl. Lite), MobileNetV3, ConvNeXt, SwinTransformer (feature maps). Others get
a one-line error naming these.

Layout at the cut: a feature map is always (B, C, H, W). timm's Swin keeps its stages channels-last
(B, H, W, C, LayerNorm over C); ``head`` hands them on as (B, C, H, W) and ``tail`` turns them back,
so a codec sees one layout for every CNN-like family and ``feature_shape`` is (C, H, W). Note that
timm puts each Swin stage's patch merging at the *start* of the next stage (the original code: at
the end), so timm's ``layers.1`` is stage 2 before its merge (28x28x192 at 224 for a base model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError

# class name -> the steps of forward_features, in order ("blocks.*": each child of blocks)
FAMILIES: dict[str, list[str]] = {
    "VisionTransformer": ["@vit_embed", "blocks.*", "norm"],
    "ResNet": ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"],
    "EfficientNet": ["conv_stem", "bn1", "blocks.*", "conv_head", "bn2"],
    "MobileNetV3": ["conv_stem", "bn1", "blocks.*"],
    "ConvNeXt": ["stem", "stages.*", "norm_pre"],
    "SwinTransformer": ["patch_embed", "layers.*", "norm"],
}
#: families whose forward_features runs channels-last (B, H, W, C): permuted to (B, C, H, W) at the cut
CHANNELS_LAST = frozenset({"SwinTransformer"})


def _vit_embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.patch_embed(x)
    x = net._pos_embed(x)
    x = net.patch_drop(x)
    return net.norm_pre(x)


@dataclass(frozen=True)
class SplitPoint:
    """Where a backbone is cut: timm's feature name, output channels and stride of the input."""

    name: str
    channels: int
    reduction: int
    tokens: bool  # ViT: (B, 1 + N, D) tokens; else (B, C, H/r, W/r) feature maps


def family(net: nn.Module) -> str:
    name = type(net).__name__
    if name not in FAMILIES:
        raise ConfigError(f"cannot split a timm {name}: supported backbones are {', '.join(sorted(FAMILIES))} "
                          f"(ViT/DeiT, ResNet, EfficientNet, MobileNetV3, ConvNeXt, Swin)")
    return name


def split_points(net: nn.Module) -> list[SplitPoint]:
    """Every place ``net`` can be cut, shallow to deep (timm's feature_info)."""
    tokens = family(net) == "VisionTransformer"
    return [SplitPoint(f["module"], int(f["num_chs"]), int(f["reduction"]), tokens) for f in net.feature_info]


def resolve_split(net: nn.Module, split: str | int) -> SplitPoint:
    """A split given by feature name (``layer2``, ``blocks.3``) or index into :func:`split_points`."""
    points = split_points(net)
    if isinstance(split, int) and not isinstance(split, bool):
        if not 0 <= split < len(points):
            raise ConfigError(f"split index {split} out of range for {type(net).__name__}: 0..{len(points) - 1} "
                              f"({', '.join(p.name for p in points)})")
        return points[split]
    for point in points:
        if point.name == split:
            return point
    raise ConfigError(f"{type(net).__name__} has no split point {split!r}; valid: {', '.join(p.name for p in points)}")


def _steps(net: nn.Module) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    steps: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
    for spec in FAMILIES[family(net)]:
        if spec == "@vit_embed":
            steps.append(("embed", lambda x, net=net: _vit_embed(net, x)))
        elif spec.endswith(".*"):
            parent = spec[:-2]
            for child_name, child in net.get_submodule(parent).named_children():
                steps.append((f"{parent}.{child_name}", child))
        else:
            steps.append((spec, net.get_submodule(spec)))
    return steps


class SplitBackbone(nn.Module):
    """A timm backbone cut at ``split``; ``head`` on the device, ``tail`` on the server."""

    def __init__(self, net: nn.Module, split: str | int) -> None:
        super().__init__()
        self.net = net
        self.point = resolve_split(net, split)
        steps = _steps(net)
        names = [n for n, _ in steps]
        if self.point.name not in names:  # pragma: no cover - feature_info names are steps
            raise ConfigError(f"split {self.point.name!r} is not a step of {type(net).__name__}.forward_features")
        cut = names.index(self.point.name) + 1
        self._head, self._tail = steps[:cut], steps[cut:]
        self.channels_last = family(net) in CHANNELS_LAST

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the features at the split point ((B, C, H, W) for every feature map)."""
        for _, step in self._head:
            x = step(x)
        return x.permute(0, 3, 1, 2).contiguous() if self.channels_last else x

    def tail(self, features: torch.Tensor) -> torch.Tensor:
        """Features at the split point (a ViT: any number of tokens, class token first) -> logits."""
        x = features.permute(0, 2, 3, 1) if self.channels_last else features
        for _, step in self._tail:
            x = step(x)
        return self.net.forward_head(x)

    def feature_shape(self, input_size: tuple[int, int, int]) -> tuple[int, ...]:
        """Shape of one sample's features at the split for an input of ``input_size`` (C, H, W)."""
        from ..runtime import module_device

        with torch.inference_mode():
            out = self.head(torch.zeros(1, *input_size, device=module_device(self.net)))
        return tuple(out.shape[1:])

    def describe(self) -> dict[str, Any]:
        p = self.point
        return {"backbone": type(self.net).__name__, "split": p.name, "channels": p.channels,
                "reduction": p.reduction}
