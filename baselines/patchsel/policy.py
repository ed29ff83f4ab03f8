"""The two decisions the device makes per image: answer locally or offload (the entropy gate),
and which patches to send (the selection rule). Pure tensor functions, so they are easy to test.

Gate rules (the image stays on the device when its uncertainty ``u < eta``):

* ``min_entropy`` (Im et al.'s rule): ``u = -log2 max_c p_c`` (bits);
* ``shannon``: ``u = -sum_c p_c log2 p_c`` (bits, at most log2(classes));
* ``margin``: ``u = 1 - (p_1 - p_2)`` for the two largest probabilities (in [0, 1]).

``eta = 0`` offloads every image (``u >= 0`` always).

Selection rules over the normalised patch scores ``s`` (sum 1):

* ``cumulative`` (default): patches in descending score while the cumulative sum stays <= delta
  (``delta = 1`` keeps every patch: the gate alone);
* ``topk``: the ``k`` highest-scoring patches;
* ``threshold``: every patch with ``s_i >= threshold``.

Every rule keeps at least the single best patch (an offloaded image always carries something),
ties are broken by patch index (stable sort), so the same scores always give the same mask.
"""
from __future__ import annotations

import torch

GATES = ("min_entropy", "shannon", "margin")
SELECTIONS = ("cumulative", "topk", "threshold")


def uncertainty(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """Per-sample uncertainty (B,) of the edge's softmax under ``rule``."""
    probs = logits.float().softmax(dim=-1)
    if rule == "min_entropy":
        return -torch.log2(probs.max(dim=-1).values)
    if rule == "shannon":
        return -(probs * torch.log2(probs.clamp_min(1e-30))).sum(dim=-1)
    if rule == "margin":
        top2 = probs.topk(2, dim=-1).values
        return 1.0 - (top2[:, 0] - top2[:, 1])
    raise ValueError(rule)


def select(scores: torch.Tensor, rule: str, *, delta: float, k: int, threshold: float) -> torch.Tensor:
    """Boolean keep mask (B, P) for the score rows ``scores`` (B, P)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True)
    ranked = order.values
    if rule == "cumulative":  # delta >= 1 keeps all (a float cumsum may end a hair above 1)
        keep_ranked = ranked.cumsum(dim=-1) <= delta if delta < 1 else torch.ones_like(ranked, dtype=torch.bool)
    elif rule == "topk":
        keep_ranked = torch.arange(scores.shape[-1]).expand_as(ranked) < k
    elif rule == "threshold":
        keep_ranked = ranked >= threshold
    else:
        raise ValueError(rule)
    keep_ranked[:, 0] = True
    mask = torch.zeros_like(keep_ranked)
    mask.scatter_(1, order.indices, keep_ranked)
    return mask
