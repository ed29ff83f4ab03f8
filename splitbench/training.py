"""Shared training pieces: seeding, batched augmentation, the LR schedule, evaluation."""
from __future__ import annotations

import math
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def loader(dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shift by up to ``pad`` pixels (zero padded) and horizontal flip, on a uint8 batch."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n,h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n,w
    idx_n = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.contiguous()


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset: Dataset, batch_size: int = 500) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader(dataset, batch_size, shuffle=False):
        correct += int((model(images).argmax(-1) == labels).sum())
        total += len(labels)
    return correct / max(1, total)


@torch.inference_mode()
def evaluate_codec(codec, dataset: Dataset, batch_size: int = 500) -> dict[str, float]:
    """Accuracy, mean real bytes and estimated bits through the real encode -> bytes -> decode path.

    For the metrics recorded in a trained codec's manifest entry (batched, so faster than the runner).
    """
    correct = total = n_bytes = 0
    est_bits = 0.0
    for images, labels in loader(dataset, batch_size, shuffle=False):
        payloads = codec.encode(codec.device_forward(images))
        logits = codec.server_forward(codec.decode([p.data for p in payloads]))
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
        n_bytes += sum(len(p.data) for p in payloads)
        est_bits += sum(p.estimated_bits for p in payloads)
    return {"test_top1": round(correct / total, 4), "bytes_per_image": round(n_bytes / total, 2),
            "est_bits_per_image": round(est_bits / total, 1), "test_images": total}


def cycle(dl: DataLoader) -> Iterator:
    while True:
        yield from dl
