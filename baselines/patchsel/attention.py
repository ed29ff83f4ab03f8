"""Edge-side ViT pass that also returns the attention the patch selection needs.

timm's ``Attention`` uses fused scaled-dot-product attention, which never materialises the
attention matrix. Rather than patching timm, each block's attention probabilities are recomputed
from that block's own ``norm1`` output and ``qkv`` projection (the same arithmetic timm's unfused
path uses), while the block itself runs unchanged; the logits are exactly timm's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer

SCORES = ("cls_attention", "rollout")


@dataclass
class EdgeOutput:
    """What the device computed for a batch: its images, the edge logits and per-patch scores."""

    images: torch.Tensor  # uint8 (B, C, H, W), what would be sent
    logits: torch.Tensor  # (B, classes), float32
    scores: torch.Tensor  # (B, patches), each row non-negative and summing to 1


def attention_probs(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention (B, heads, N, N) of ``block`` for its input tokens ``x``."""
    attn = block.attn
    b, n, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def edge_forward(net: VisionTransformer, x: torch.Tensor, score: str = "cls_attention") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-patch scores for the normalised batch ``x``.

    ``cls_attention``: the last block's CLS row over the patch columns, averaged over heads
    (Im et al.'s default). ``rollout``: attention rollout (Abnar & Zuidema 2020) over all blocks,
    each block's head-mean attention mixed with the identity for the residual path (0.5 A + 0.5 I,
    rows renormalised), the product's CLS row. Both are renormalised to sum 1 over the patches.
    """
    prefix = net.num_prefix_tokens
    tokens = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
    rollout = None
    last = len(net.blocks) - 1
    for i, block in enumerate(net.blocks):
        if score == "rollout" or i == last:
            probs = attention_probs(block, tokens).mean(dim=1)  # (B, N, N), head mean
            if score == "rollout":
                eye = torch.eye(probs.shape[-1], dtype=probs.dtype, device=probs.device).expand_as(probs)
                mixed = 0.5 * probs + 0.5 * eye
                mixed = mixed / mixed.sum(dim=-1, keepdim=True)
                rollout = mixed if rollout is None else mixed @ rollout
            else:
                rollout = probs
        tokens = block(tokens)
    logits = net.forward_head(net.norm(tokens))
    scores = rollout[:, 0, prefix:]
    scores = scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return logits, scores
