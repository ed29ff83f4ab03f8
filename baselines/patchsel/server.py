"""Server side of patch selection: a timm ViT that sees only the kept patches.

The received patches are embedded with the server's own patch embedding (a stride-p convolution,
so embedding a lone patch equals embedding it in place), get the server's positional embedding at
their *original* grid indices, the class token is prepended, and the blocks run on these 1 + n
tokens only: server compute shrinks with the number of kept patches.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from splitbench.errors import ConfigError
from splitbench.models.vit import vit_logits_from

from .wire import Grid


def grid_of(net: torch.nn.Module, input_size: tuple[int, int, int], what: str) -> Grid:
    """The patch grid of a timm ViT; ConfigError for models patch selection cannot drive."""
    if not isinstance(net, VisionTransformer):
        raise ConfigError(f"patchsel needs a timm VisionTransformer {what.split(' ')[0]} model; the {what} is "
                          f"{type(net).__name__} (valid: vit_fmnist or any timm ViT with a class token)")
    if net.num_prefix_tokens != 1 or net.cls_token is None or net.pos_embed is None or net.dynamic_img_size:
        raise ConfigError(f"patchsel needs a ViT with one class token and a fixed absolute positional "
                          f"embedding; the {what} has {net.num_prefix_tokens} prefix tokens")
    c, h, w = input_size
    ph, pw = net.patch_embed.patch_size
    if ph != pw or h % ph or w % pw:
        raise ConfigError(f"patchsel needs square patches tiling the input; the {what} has patches "
                          f"{ph}x{pw} on {h}x{w}")
    return Grid(channels=c, rows=h // ph, cols=w // pw, patch=ph)


def kept_tokens(net: VisionTransformer, patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Tokens (B, 1 + n, D) for normalised patches (B, n, C, p, p) at grid ``indices`` (B, n)."""
    b, n = indices.shape
    emb = net.patch_embed.proj(patches.flatten(0, 1)).flatten(1).view(b, n, -1)
    emb = net.patch_embed.norm(emb)
    pos = net.pos_embed[0]
    if net.no_embed_class:
        tokens = torch.cat([net.cls_token.expand(b, -1, -1), emb + pos[indices]], dim=1)
    else:
        tokens = torch.cat([net.cls_token.expand(b, -1, -1) + pos[:1], emb + pos[1 + indices]], dim=1)
    return net.norm_pre(net.patch_drop(net.pos_drop(tokens)))


def kept_logits(net: VisionTransformer, patches: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Server logits (B, classes) from the kept patches only."""
    return vit_logits_from(net, kept_tokens(net, patches, indices), 0)
