"""The default server model: a small timm VisionTransformer trained here on Fashion-MNIST.

28x28 grey input, 4x4 patches (a 7x7 grid, 49 tokens + class token). The architecture lives in
``conf/model/vit_fmnist.yaml`` (``arch``); the shipped weights in ``checkpoints/`` with a manifest
entry that records the arch they were trained with.
"""
from __future__ import annotations

from typing import Any

import torch

from timm.models.vision_transformer import VisionTransformer

from ..zoo import Weights, resolve
from . import TaskModel, load_weights, register_model

FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")  # torchvision FashionMNIST.classes: what these models were trained on
DEFAULT_ARCH = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6,
                    num_heads=3, mlp_ratio=2.0)


def create_vit(arch: dict[str, Any] | None = None) -> VisionTransformer:
    return VisionTransformer(**{**DEFAULT_ARCH, **dict(arch or {})})


def build_vit(family: str, arch: dict[str, Any] | None, checkpoint: "str | Weights | None", pretrained: bool,
              mean: tuple[float, ...] = FMNIST_MEAN, std: tuple[float, ...] = FMNIST_STD) -> TaskModel:
    """A ViT of ``arch`` with the zoo's ``family`` weights, a user's path, or in-memory ``Weights``."""
    arch = {**DEFAULT_ARCH, **dict(arch or {})}
    net = create_vit(arch)
    fingerprint = "untrained"
    if pretrained:
        weights = checkpoint if isinstance(checkpoint, Weights) else resolve(family, point={}, path=checkpoint)
        weights.check_arch(arch, family=family)
        fingerprint = load_weights(net, weights, f"model {family} with arch {arch}")
    classes = FMNIST_CLASSES if arch["num_classes"] == len(FMNIST_CLASSES) else None
    return TaskModel(net, mean, std, name=family, input_size=(arch["in_chans"], arch["img_size"],
                     arch["img_size"]), num_classes=arch["num_classes"], fingerprint=fingerprint,
                     class_names=classes)


@register_model("vit_fmnist")
def vit_fmnist(arch: dict[str, Any] | None = None, checkpoint: str | None = None,
               pretrained: bool = True) -> TaskModel:
    """``pretrained=false`` gives fresh weights (training); ``checkpoint=PATH`` a user's weights."""
    return build_vit("vit_fmnist", arch, checkpoint, pretrained)


# -- split points inside a timm VisionTransformer (used by codecs that cut the server ViT) ----------
def vit_tokens_until(net: VisionTransformer, x: "torch.Tensor", split: int) -> "torch.Tensor":
    """Tokens (class token first, positional embedding added) after the first ``split`` blocks.

    ``x`` is the *normalised* image (TaskModel.normalize). ``split=0`` returns the embedded patches.
    """
    x = net.patch_embed(x)
    x = net._pos_embed(x)
    x = net.patch_drop(x)
    x = net.norm_pre(x)
    for block in net.blocks[:split]:
        x = block(x)
    return x


def vit_logits_from(net: VisionTransformer, tokens: "torch.Tensor", split: int) -> "torch.Tensor":
    """Run blocks ``split..`` on ``tokens`` (any number of tokens, class token first) to logits."""
    x = tokens
    for block in net.blocks[split:]:
        x = block(x)
    x = net.norm(x)
    return net.forward_head(x)
