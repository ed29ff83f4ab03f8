"""The edge model for patch selection: a smaller timm VisionTransformer on the server ViT's grid.

Attention-aware patch selection (Im et al. 2024) needs a cheap device-side ViT whose patches are
the server's patches: the edge's CLS attention then scores exactly the tokens the server will (or
will not) receive. So the edge ViT keeps the server's 28x28 input and 4x4 patch size (7x7 = 49
patches) and only shrinks width and depth. It is trained by the same entry point as the server
(``python -m splitbench.train model=vit_edge``) and shipped as ``checkpoints/vit_edge.pt``.
"""
from __future__ import annotations

from typing import Any

from . import TaskModel, register_model
from .vit import build_vit

EDGE_ARCH = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4,
                 num_heads=4, mlp_ratio=2.0)


@register_model("vit_edge")
def vit_edge(arch: dict[str, Any] | None = None, checkpoint: str | None = None,
             pretrained: bool = True) -> TaskModel:
    """The shipped edge ViT; ``pretrained=false`` gives fresh weights, ``checkpoint=PATH`` yours."""
    return build_vit("vit_edge", {**EDGE_ARCH, **dict(arch or {})}, checkpoint, pretrained)
