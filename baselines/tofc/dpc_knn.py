"""DPC-KNN token merging (density-peaks clustering with a K-nearest-neighbour density), batched.

TOFC merges the patch tokens of each image into ``n_c`` clusters before coding them, so both the
payload and the server's compute shrink. Per image (all images of a batch at once, no Python loop):

1. distances ``d_ij = ||x_i - x_j|| / sqrt(dim)`` between the N patch tokens;
2. density ``rho_i = exp(-mean of d_ij^2 over the K nearest tokens j)`` (the token itself counts
   as one of its K neighbours, as in the public DPC-KNN / TCFormer code);
3. ``delta_i`` = distance to the nearest token of higher density; the densest token gets the
   largest distance in the image's matrix;
4. the ``n_c`` tokens with the highest ``rho * delta`` become centres; every token joins its
   nearest centre; a merged token is the plain mean of its cluster.

Ties are broken *deterministically* (the same bytes on every run, unlike the random-noise trick of
the reference code): equal densities are ordered by token index (lower index counts as denser),
equal scores pick the lower index first, and a token equidistant to two centres joins the
higher-scoring one.
"""
from __future__ import annotations

import math

import torch


def dpc_knn_clusters(x: torch.Tensor, n_clusters: int, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the tokens of each batch element.

    ``x``: (B, N, C) tokens. Returns ``centres`` (B, n_c) token indices ordered by descending score
    and ``assign`` (B, N) cluster ids in ``[0, n_c)`` (cluster j is the one of ``centres[:, j]``).
    """
    b, n, c = x.shape
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}], got {n_clusters}")
    k = max(1, min(k, n))
    xf = x.detach().float()
    # exact pairwise differences (no matmul trick): identical tokens get distance 0, so ties are real ties
    dist = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(c)  # (B, N, N)
    knn = torch.topk(dist, k, dim=-1, largest=False).values  # values only: ties do not matter
    density = torch.exp(-(knn ** 2).mean(dim=-1))  # (B, N)

    idx = torch.arange(n, device=x.device)
    # higher[b, i, j]: token j is denser than token i (ties: the lower index is denser)
    d_i, d_j = density[:, :, None], density[:, None, :]
    higher = (d_j > d_i) | ((d_j == d_i) & (idx[None, None, :] < idx[None, :, None]))
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(higher, dist, dist_max.expand_as(dist)).min(dim=-1).values  # (B, N)
    score = delta * density
    centres = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :n_clusters]

    to_centres = torch.gather(dist, 1, centres[:, :, None].expand(b, n_clusters, n))  # (B, n_c, N)
    assign = to_centres.argmin(dim=1)  # first minimum = the higher-scoring centre
    assign.scatter_(1, centres, torch.arange(n_clusters, device=x.device).expand(b, n_clusters))
    return centres, assign


def merge_tokens(x: torch.Tensor, assign: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each cluster's tokens: (B, n_c, C), and the cluster sizes (B, n_c)."""
    b, n, c = x.shape
    one_hot = torch.nn.functional.one_hot(assign, n_clusters).to(x.dtype)  # (B, N, n_c)
    sizes = one_hot.sum(dim=1)  # (B, n_c), >= 1 (every centre is in its own cluster)
    merged = one_hot.transpose(1, 2) @ x / sizes[:, :, None]
    return merged, sizes


def dpc_knn_merge(tokens: torch.Tensor, n_clusters: int, k: int = 5) -> torch.Tensor:
    """ViT tokens (B, 1+N, C), class token first -> (B, 1+n_c, C): class token + merged patches.

    ``n_clusters >= N`` keeps every patch token unchanged (the "no merging" ablation).
    """
    cls, patches = tokens[:, :1], tokens[:, 1:]
    if n_clusters >= patches.shape[1]:
        return tokens
    _, assign = dpc_knn_clusters(patches, n_clusters, k)
    merged, _ = merge_tokens(patches, assign, n_clusters)
    return torch.cat([cls, merged], dim=1)
