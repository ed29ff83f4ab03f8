"""Training for ``tofc``: task cross-entropy through the server tail + lambda * bits + balance.

    python -m splitbench.train codec=tofc codec.n_clusters=8 codec.lmbda=0.002 train.threads=1

The device half (ViT blocks before the split, DPC-KNN) is fixed and training-free; the entropy
model (steps, hyperprior, experts, router) trains, and with ``codec.finetune_tail=true`` a copy of
the server tail too. The loss is ``CE + lmbda * bits/image + balance_alpha * balance``; bits are
the soft expert mixture's estimate (see entropy.py). Steps: ``codec.train_steps`` (or
``train.max_steps``), Adam at ``train.lr`` with warmup + cosine; batch ``train.batch_size``.
The shipped entry's metrics come from the real encode -> bytes -> decode path on the 10k test set
with the fp16 weights exactly as shipped.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from splitbench.data import build_dataset
from splitbench.errors import ConfigError
from splitbench.models import build_model
from splitbench.models.checkpoints import save_shipped
from splitbench.models.vit import vit_logits_from, vit_tokens_until
from splitbench.paths import CHECKPOINT_DIR
from splitbench.paths import cache_dir
from splitbench.training import evaluate_codec, loader, seed_everything, warmup_cosine

from .coder import TokenCoder
from .dpc_knn import dpc_knn_merge
from .entropy import shipped_state

INIT_IMAGES = 512  # images whose tokens set the quantiser's shift and initial steps


@torch.inference_mode()
def head_tokens(codec: Any, task: Any, dataset: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens after the split (fp16) and labels of ``n`` seeded-random training images.

    The device half is frozen, so these are computed once and cached on disk (keyed by the server
    checkpoint, split, n and seed): every training run then costs only the entropy model and tail.
    """
    from torch.utils.data import Subset

    path = cache_dir() / "tofc" / f"head_{task.fingerprint[:16]}_s{codec.split}_n{n}_seed{seed}.pt"
    if path.exists():
        cached = torch.load(path, weights_only=True)
        return cached["tokens"], cached["labels"]
    subset = Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    tokens, labels = [], []
    for images, y in loader(subset, 500, shuffle=False):
        tokens.append(vit_tokens_until(task.net, task.normalize(images), codec.split).half())
        labels.append(y)
    out = {"tokens": torch.cat(tokens), "labels": torch.cat(labels)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(out, tmp)
    os.replace(tmp, path)
    return out["tokens"], out["labels"]


def fit(cls: Any, cfg: Any, command: str) -> dict[str, Any]:
    t = cfg.train
    options = {k: v for k, v in OmegaConf.to_container(cfg.codec, resolve=True).items() if k != "name"}
    if options.get("entropy", "hyperprior") != "hyperprior":
        raise ConfigError("codec.entropy=none (fp16 tokens) has nothing to train; train with entropy=hyperprior")
    if options.get("checkpoint") is not None:
        raise ConfigError("codec.checkpoint is for loading; training writes checkpoints/<name>.pt "
                          "(train.out_dir / train.save_as choose where and under which name)")
    codec = cls(**{**options, "entropy": "none"})  # no checkpoint to load yet
    codec.entropy = "hyperprior"
    gen = seed_everything(t.seed)
    task = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    codec.bind(task)
    dim = task.net.embed_dim
    train_set = build_dataset(cfg.data, split="train")
    test_set = build_dataset(cfg.data, split="test")
    steps = int(t.max_steps) if t.max_steps is not None else int(codec.train_steps)
    n_train = min(int(codec.train_images), len(train_set))

    start = time.time()
    heads = head_tokens(codec, task, train_set, n_train, t.seed)
    with torch.no_grad():  # DPC-KNN is training-free: merge every cached image once
        feats = torch.cat([dpc_knn_merge(heads[0][i:i + 500].float(), codec.n_clusters, codec.k).half()
                           for i in range(0, n_train, 500)])
    labels_all = heads[1]
    model = codec.new_model(dim)
    model.init_from_data(feats[:INIT_IMAGES].float().reshape(-1, dim))

    server = task.net
    params = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    groups = [{"params": params, "lr": t.lr}]
    if codec.finetune_tail:
        server = copy.deepcopy(task.net)
        tail = codec_tail(server, codec.split)
        for p in tail.parameters():
            p.requires_grad_(True)
        groups.append({"params": list(tail.parameters()), "lr": t.lr * 0.1})
    opt = torch.optim.Adam(groups)
    aux_opt = torch.optim.Adam([model.bottleneck.quantiles], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, max(1, steps // 20)))
    ce_fn = torch.nn.CrossEntropyLoss()

    model.train()
    server.train(codec.finetune_tail)
    order = torch.randperm(n_train, generator=gen)
    pos, bs = 0, min(int(t.batch_size), n_train)
    with tqdm(total=steps, desc=f"train tofc {codec.rate_point()}", unit="step", dynamic_ncols=True,
              mininterval=10) as bar:
        for step in range(steps):
            if pos + bs > n_train:
                order, pos = torch.randperm(n_train, generator=gen), 0
            batch = order[pos:pos + bs]
            pos += bs
            tokens_hat, bits, weights, _ = model(feats[batch].float(), codec.temperature)
            logits = vit_logits_from(server, tokens_hat, codec.split)
            ce = ce_fn(logits, labels_all[batch])
            rate = bits.mean()
            balance = model.balance_loss(weights) if model.n_experts > 1 else rate.new_zeros(())
            loss = ce + codec.lmbda * rate + codec.balance_alpha * balance
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            aux_opt.zero_grad(set_to_none=True)
            model.bottleneck.loss().backward()
            aux_opt.step()
            bar.update(1)
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(ce=f"{ce.item():.3f}", bytes=f"{rate.item() / 8:.1f}", bal=f"{balance.item():.4f}")
    minutes = (time.time() - start) / 60

    # the shipped state, and the metrics of exactly that state (fp16 round trip)
    state = shipped_state(model)
    if codec.finetune_tail:
        state.update({f"tail.{k}": v for k, v in codec_tail(server, codec.split).state_dict().items()})
    shipped = {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}
    eval_model = codec.new_model(dim)
    eval_model.load_state_dict({k: v for k, v in shipped.items() if not k.startswith("tail.")}, strict=False)
    codec.coder = TokenCoder(eval_model, tag=b"training-eval")
    if codec.finetune_tail:
        codec.tail_state = {k[5:]: v for k, v in shipped.items() if k.startswith("tail.")}
        codec.bind(task)
    metrics = evaluate_codec(codec, test_set)
    metrics["est_bytes_per_image"] = round(metrics.pop("est_bits_per_image") / 8, 2)
    name = t.save_as or codec.ckpt_name
    arch = {"split": codec.split, "n_clusters": codec.n_clusters, "k": codec.k, "n_experts": codec.n_experts,
            "distribution": codec.distribution, "hyper_channels": codec.hyper_channels, "hidden": codec.hidden,
            "dim": dim, "finetune_tail": codec.finetune_tail,
            "transform": codec.transform, "train_images": n_train}
    meta = {"kind": "codec", "codec": "tofc", "command": command, "arch": arch, "lmbda": codec.lmbda,
            "data": f"{cfg.data.name} train split ({n_train} seeded-random of {len(train_set)} images, {steps} steps "
                    f"x {bs}), "
                    f"seed {t.seed}; server model {task.name} ({task.fingerprint[:12]})",
            "metrics": metrics, "train_minutes_2cpu": round(minutes, 1), "steps": steps}
    out = Path(t.out_dir) if t.out_dir else CHECKPOINT_DIR
    entry = save_shipped(name, state, meta, directory=out)
    print(f"{name}: test top-1 {metrics['test_top1']:.4f}, {metrics['bytes_per_image']:.1f} bytes/image "
          f"(estimate {metrics['est_bytes_per_image']:.1f}) after {steps} steps ({minutes:.1f} min); "
          f"saved {out / entry['file']} ({entry['size']} bytes) sha256 {entry['sha256'][:12]}")
    return entry


def codec_tail(net: Any, split: int) -> Any:
    from .codec import tail_modules

    return tail_modules(net, split)
