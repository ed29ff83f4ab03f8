"""Task models: the server's classifier that every codec's output feeds.

``build_model(cfg)`` returns a :class:`TaskModel`: the network plus its input normalisation, taking
uint8 images. Registered names build this project's models (``vit_fmnist``, the offline
``tf_efficientnet_lite0``, or a plugin's from the ``splitbench.models`` entry-point group); any
other name is created with ``timm.create_model``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..options import check, declared, open_ended
from ..registry import Registry
from ..zoo import Weights, resolve
from .hub import offline_unless_reachable


class TaskModel(nn.Module):
    """A classifier that takes uint8 (or [0,1] float) images and returns logits."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], *, name: str,
                 input_size: tuple[int, int, int], num_classes: int, fingerprint: str = "",
                 class_names: Sequence[str] | None = None, crop_pct: float = 1.0,
                 interpolation: str = "bicubic") -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.name = name
        self.input_size = tuple(int(v) for v in input_size)
        self.num_classes = num_classes
        self.fingerprint = fingerprint  # checkpoint hash, part of every record cache key
        # What a labelled folder is scored against: class i is named class_names[i] (ImageNet-1k
        # models: WordNet synsets such as n01440764). crop_pct/interpolation: the preprocessing the
        # weights expect (timm's pretrained config), used by image folders.
        if class_names is None and num_classes == 1000:
            from timm.data import ImageNetInfo

            class_names = ImageNetInfo().label_names()
        self.class_names = list(class_names) if class_names is not None else None
        self.crop_pct = float(crop_pct)
        self.interpolation = str(interpolation)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0,1] float) images from any device -> normalised floats on this model's device
        (decoders and data loaders hand over CPU tensors; the copy is part of the calling stage)."""
        images = images.to(self.mean.device)
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


MODELS: Registry[TaskModel] = Registry("model", group="splitbench.models")


def register_model(name: str) -> Callable[[Callable[..., TaskModel]], Callable[..., TaskModel]]:
    return MODELS.register(name)


def build_model(cfg: Any) -> TaskModel:
    """Build and load the task model named by ``cfg.name`` (eval mode, gradients off)."""
    options = {k: v for k, v in dict(cfg).items() if k != "name"}
    name = cfg["name"]
    factory = MODELS.get(name) if name in MODELS else _timm_model
    if factory is _timm_model:
        options["name"] = name
    elif not open_ended(factory):  # the factory's signature is the declaration (splitbench.options)
        check(options, declared(factory), "model", name)
    model = factory(**options)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _timm_model(name: str, pretrained: bool = False, checkpoint: str | None = None,
                num_classes: int | None = None, input_size: Sequence[int] | None = None,
                **unknown: Any) -> TaskModel:
    """Any timm model: hub weights with ``pretrained=true`` (needs internet) or ``checkpoint=PATH``."""
    import timm

    if unknown:
        raise ConfigError(f"model {name!r} (timm) has no option(s) {', '.join(sorted(unknown))}; valid: "
                          "name, pretrained, checkpoint, num_classes, input_size")
    if not timm.is_model(name):
        raise ConfigError(f"unknown model {name!r}: not a splitbench model ({', '.join(MODELS.names())}) "
                          f"nor a timm model (see timm.list_models())")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    from_hub = bool(pretrained) and checkpoint is None
    with (offline_unless_reachable() if from_hub else contextlib.nullcontext(True)) as reachable:
        try:
            net = timm.create_model(name, pretrained=from_hub, **kwargs)
        except Exception as err:
            why = "the model hub is unreachable and they are not in the local cache" if not reachable else \
                str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"timm model {name!r} needs pretrained weights: {why}; pass "
                                  f"model.checkpoint=PATH (a state dict) or model.pretrained=false") from None
    fingerprint = f"timm:{name}:pretrained={pretrained}"
    if checkpoint is not None:
        weights = resolve(path=checkpoint)
        missing, unexpected = net.load_state_dict(weights.state, strict=False)
        if missing or unexpected:
            raise weights.misfit(f"timm model {name!r}", f"{len(missing)} missing, {len(unexpected)} unexpected keys")
        fingerprint = f"timm:{name}:{weights.fingerprint}"
    cfg = net.pretrained_cfg
    size = tuple(input_size) if input_size else tuple(cfg.get("input_size", (3, 224, 224)))
    return TaskModel(net, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)),
                     name=name, input_size=size, num_classes=net.num_classes, fingerprint=fingerprint,
                     crop_pct=cfg.get("crop_pct", 0.875), interpolation=cfg.get("interpolation", "bicubic"))


def load_weights(net: nn.Module, weights: Weights, target: str) -> str:
    """Load ``weights`` strictly into ``net``; return their fingerprint (part of every cache key)."""
    try:
        net.load_state_dict(weights.state, strict=True)
    except RuntimeError as err:
        raise weights.misfit(target, str(err)) from None
    return weights.fingerprint


__all__ = ["TaskModel", "build_model", "register_model", "load_weights", "MODELS"]
