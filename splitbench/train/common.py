"""Training pieces every trainer shares: seeding, batched augmentation, the LR schedule, evaluation."""
from __future__ import annotations

import math
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..metrics import psnr


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def loader(dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
           workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches read in this process (``workers=0``) or by ``workers`` persistent DataLoader processes;
    the shuffle draws from ``generator`` here either way, so the batches are the same."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shift by up to ``pad`` pixels (zero padded) and horizontal flip, on a uint8 batch on any
    device; the random draws come from the CPU ``generator``, so every device sees the same ones."""
    n, _, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h))  # n,h
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w))  # n,w
    idx_n = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
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
        correct += int((model(images).argmax(-1).cpu() == labels).sum())
        total += len(labels)
    return correct / max(1, total)


@torch.inference_mode()
def evaluate_codec(codec: Any, task: Any, dataset: Dataset, batch_size: int = 100,
                   check_images: int = 100) -> dict[str, Any]:
    """Manifest metrics of ``codec`` on ``dataset`` through real bytes: the one evaluation of training.

    ``test_top1`` scores labelled images (NaN when none are); ``agreement`` is the top-1 agreement
    with the uncompressed task model on every image (the score for unlabelled photos).

    Every batch goes device_forward -> encode -> bytes -> decode -> server_forward, local answers
    (payloads with a ``local_prediction``) included. A codec with ``round_trip_batched(images) ->
    (bytes, estimated bits, decoded images)`` (the learned image codecs: ~20x faster than one image
    at a time) is scored through that instead, and the per-image path is run on the first
    ``check_images`` images to record how many give identical bytes. ``bind`` puts the codec's
    networks on the task model's device.
    """
    codec.bind(task)
    batched = getattr(codec, "round_trip_batched", None)
    correct = total = labelled = offloaded = same = checked = agree = 0
    n_bytes = est = psnr_sum = 0.0
    n_est = n_psnr = 0
    for images, labels in loader(dataset, batch_size, shuffle=False):
        if batched is not None:
            blobs, bits, decoded = batched(images)  # decoded images on the CPU (the task model moves them)
            preds = task(decoded).argmax(-1).tolist()
            sizes = [len(b) for b in blobs]
            est += sum(bits)
            n_est += len(bits)
            psnr_sum += sum(psnr(d, o) for d, o in zip(decoded, images))
            n_psnr += len(images)
            offloaded += len(images)
            if checked < check_images:
                part = images[: check_images - checked]
                payloads = codec.encode(codec.device_forward(part))
                codec.server_forward(codec.decode([p.data for p in payloads]))  # must decode
                same += sum(p.data == b for p, b in zip(payloads, blobs))
                checked += len(part)
        else:
            payloads = codec.encode(codec.device_forward(images))
            preds = [p.local_prediction for p in payloads]
            sent = [i for i, p in enumerate(payloads) if p.offloaded]
            if sent:
                logits = codec.server_forward(codec.decode([payloads[i].data for i in sent]))
                for j, i in enumerate(sent):
                    preds[i] = int(logits[j].argmax())
            sizes = [len(p.data) for p in payloads]
            finite = [p.estimated_bits for p in payloads if math.isfinite(p.estimated_bits)]
            est, n_est = est + sum(finite), n_est + len(finite)
            shown = [p.extras["psnr"] for p in payloads if math.isfinite(p.extras.get("psnr", math.nan))]
            psnr_sum, n_psnr = psnr_sum + sum(shown), n_psnr + len(shown)
            offloaded += len(sent)
        reference = task(images).argmax(-1).tolist()  # the uncompressed model's answers
        agree += sum(int(p == r) for p, r in zip(preds, reference))
        correct += sum(int(p == int(y)) for p, y in zip(preds, labels) if int(y) >= 0)
        labelled += sum(int(int(y) >= 0) for y in labels)
        n_bytes += sum(sizes)
        total += len(labels)
    # unlabelled data (label -1, e.g. a folder that is not the model's classes) has no accuracy: NaN, never 0
    top1 = round(correct / labelled, 4) if labelled else math.nan
    out: dict[str, Any] = {"test_top1": top1, "agreement": round(agree / total, 4),
                           "bytes_per_image": round(n_bytes / total, 2), "test_images": total}
    if getattr(codec, "sends_image", False):
        c, h, w = task.input_size
        out["bpp"] = round(n_bytes * 8 / total / (h * w), 4)
    if n_est:
        out["est_bits_per_image"] = round(est / n_est, 1)
    if n_psnr:
        out["psnr"] = round(psnr_sum / n_psnr, 2)
    if offloaded < total:
        out["offload_ratio"] = round(offloaded / total, 4)
    if checked:
        out["per_image_path_same_bytes"] = f"{same}/{checked}"
    return out


def cycle(dl: DataLoader) -> Iterator:
    """Batches of ``dl`` epoch after epoch (a new shuffle only when the next epoch starts)."""
    while True:
        yield from dl
