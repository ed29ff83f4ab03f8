"""Optional: fine-tune the server ViT for kept-patch inputs (``server_weights=vit_fmnist_patchdrop``).

The shipped server ViT was trained on full images; patch selection shows it only the tokens the
edge kept. This adapts a copy of it to that input: every batch keeps the top-k patches by the edge
model's attention score (k uniform in [K_MIN, P], a quarter of batches keep all P so full-image
accuracy is not forgotten), with the task's cross-entropy. The result ships as its own checkpoint
and is used only when ``codec.server_weights`` names it; the default codec runs the stock server.

    python -m splitbench.train codec=patchsel train.epochs=2 train.lr=0.0003 train.warmup_epochs=0.1 train.threads=1
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from splitbench.data import build_dataset
from splitbench.models import build_model
from splitbench.models.checkpoints import save_shipped
from splitbench.paths import CHECKPOINT_DIR
from splitbench.training import augment, evaluate, loader, seed_everything, warmup_cosine

from .attention import edge_forward
from .server import grid_of, kept_logits

K_MIN = 4          # fewest patches a training batch keeps
P_FULL = 0.25      # share of batches that keep every patch
DEFAULT_NAME = "vit_fmnist_patchdrop"


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, P, C, p, p), patches in row-major grid order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, -1, c, patch, patch)


@torch.inference_mode()
def evaluate_codec(codec: Any, task: Any, dataset: Any, batch_size: int = 500) -> dict[str, float]:
    """Accuracy and real bytes/image of ``codec`` through its actual encode -> bytes -> decode path."""
    codec.bind(task)
    correct = total = nbytes = offloaded = 0
    for images, labels in loader(dataset, batch_size, shuffle=False):
        payloads = codec.encode(codec.device_forward(images))
        preds = [p.local_prediction for p in payloads]
        sent = [i for i, p in enumerate(payloads) if p.offloaded]
        if sent:
            logits = codec.server_forward(codec.decode([payloads[i].data for i in sent]))
            for j, i in enumerate(sent):
                preds[i] = int(logits[j].argmax())
        correct += sum(int(p == int(y)) for p, y in zip(preds, labels))
        total += len(labels)
        nbytes += sum(len(p.data) for p in payloads)
        offloaded += len(sent)
    return {"accuracy": round(correct / total, 4), "bytes_per_image": round(nbytes / total, 1),
            "offload_ratio": round(offloaded / total, 4), "test_images": total}


def fit(codec_cls: Any, cfg: Any, command: str) -> dict[str, Any]:
    t = cfg.train
    gen = seed_everything(t.seed)
    options = {k: v for k, v in OmegaConf.to_container(cfg.codec, resolve=True).items()
               if k not in ("name", "server_weights")}
    reference = codec_cls(**options)  # loads the edge model and validates the options
    edge = reference.edge
    server = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    grid = grid_of(server.net, server.input_size, f"server model {server.name!r}")
    for p in server.parameters():
        p.requires_grad_(True)
    train_set, test_set = build_dataset(cfg.data, split="train"), build_dataset(cfg.data, split="test")
    dl = loader(train_set, t.batch_size, shuffle=True, generator=gen)
    steps = int(t.epochs * len(dl)) if t.max_steps is None else int(t.max_steps)
    warmup = int(t.warmup_epochs * len(dl))
    opt = torch.optim.AdamW(server.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    step, start = 0, time.time()
    with tqdm(total=steps, desc="finetune server for kept patches", unit="step", dynamic_ncols=True) as bar:
        while step < steps:
            server.train()
            for images, labels in dl:
                images = augment(images, gen)
                k = grid.patches if torch.rand(1, generator=gen).item() < P_FULL else int(
                    torch.randint(K_MIN, grid.patches + 1, (1,), generator=gen))
                with torch.no_grad():
                    _, scores = edge_forward(edge.net, edge.normalize(images), reference.score)
                idx = scores.topk(k, dim=-1).indices.sort(dim=-1).values
                patches = patchify(server.normalize(images), grid.patch)
                kept = torch.gather(patches, 1, idx.view(*idx.shape, 1, 1, 1).expand(-1, -1, *patches.shape[2:]))
                loss = loss_fn(kept_logits(server.net, kept, idx), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", k=k)
                if step >= steps:
                    break
    server.eval()
    for p in server.parameters():
        p.requires_grad_(False)
    minutes = (time.time() - start) / 60
    full_acc = evaluate(server, test_set)
    metrics = {"full_image_top1": round(full_acc, 4), **evaluate_codec(reference, server, test_set),
               "codec_options": options}
    name = t.save_as or DEFAULT_NAME
    meta = {"kind": "patchsel_server", "model": server.name, "command": command,
            "data": f"{cfg.data.name} train split ({len(train_set)} images), seed {t.seed}; starts from the "
                    f"shipped {server.name}", "metrics": metrics, "train_minutes_2cpu": round(minutes, 1),
            "steps": step, "k_min": K_MIN, "p_full": P_FULL}
    out = Path(t.out_dir) if t.out_dir else CHECKPOINT_DIR
    entry = save_shipped(name, server.net.state_dict(), meta, directory=out)
    print(f"{name}: {metrics} after {step} steps ({minutes:.1f} min); saved {out / entry['file']}")
    return entry


__all__ = ["fit", "evaluate_codec", "patchify", "DEFAULT_NAME"]
