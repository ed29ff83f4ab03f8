"""Training for ``tofc``: task cross-entropy through the server tail + lambda * bits + balance.

    python -m splitbench.train codec=tofc codec.n_clusters=8 codec.lmbda=0.002 train.threads=1

The device half (ViT blocks before the split, DPC-KNN) is fixed and training-free; the entropy
model (steps, hyperprior, experts, router) trains, and with ``codec.finetune_tail=true`` a copy of
the server tail too (at a tenth of the learning rate). The loss is ``CE + lmbda * bits/image +
balance_alpha * balance``; bits are the soft expert mixture's estimate (see entropy.py). Batches
come from the cached, merged tokens of ``images`` seeded-random training images, not from images.
Any timm ViT with a class token can be the server; on an unlabelled image folder (labels -1) the
target is the uncompressed server's own answer.
Settings: ``codec.train.*`` (DEFAULTS below).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterator

import torch

from splitbench.errors import ConfigError
from splitbench.models.vit import vit_logits_from, vit_tokens_until
from splitbench.paths import cache_dir
from splitbench.train import Step, TrainSetup, codec_options, evaluate_codec, loader, settings
from splitbench.zoo import Weights

from .dpc_knn import dpc_knn_merge
from .entropy import SelectiveHyperprior, shipped_state

INIT_IMAGES = 512  # images whose tokens set the quantiser's shift and initial steps
DEFAULTS: dict[str, Any] = {
    "steps": 800,            # optimiser steps (train.max_steps overrides)
    "batch_size": 128,
    "lr": 0.002,             # Adam (tail: lr / 10), warm-up over steps / 20, cosine decay
    "images": 24000,         # seeded-random training images whose split tokens are cached once
    "q_step": 1.0,           # initial quantisation step of every component, in token units (then learned)
    "temperature": 1.0,      # router softmax temperature in training (inference: argmax)
    "balance_alpha": 1.0,    # load-balance weight: alpha * sum_e (mean weight_e - 1/n_e)^2
    "aux_lr": 1e-3,          # entropy-bottleneck quantiles
}


@torch.inference_mode()
def head_tokens(codec: Any, task: Any, dataset: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens after the split (fp16) and labels of ``n`` seeded-random training images.

    The device half is frozen, so these are computed once and cached on disk (keyed by the server
    checkpoint, split, n, seed and, off the CPU, the device type): every training run then costs only
    the entropy model and tail. They are computed where the task model is and stored as CPU tensors.
    """
    from torch.utils.data import Subset

    from splitbench.runtime import module_device

    device = module_device(task)
    on = "" if device.type == "cpu" else f"_{device.type}"
    path = cache_dir() / "tofc" / f"head_{task.fingerprint[:16]}_s{codec.split}_n{n}_seed{seed}{on}.pt"
    if path.exists():
        cached = torch.load(path, weights_only=True)
        return cached["tokens"], cached["labels"]
    subset = Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    tokens, labels = [], []
    for images, y in loader(subset, 500, shuffle=False):
        tokens.append(vit_tokens_until(task.net, task.normalize(images), codec.split).half().cpu())
        labels.append(y)
    out = {"tokens": torch.cat(tokens), "labels": torch.cat(labels)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(out, tmp)
    os.replace(tmp, path)
    return out["tokens"], out["labels"]


class TofcTrainer:
    def __init__(self, cls: Any, cfg: Any) -> None:
        self.cls, self.cfg = cls, cfg
        self.settings = settings(cfg.codec.get("train"), DEFAULTS)
        self.options = codec_options(cfg)
        if self.options.get("entropy", "hyperprior") != "hyperprior":
            raise ConfigError("codec.entropy=none (fp16 tokens) has nothing to train; train with entropy=hyperprior")
        if self.options.get("checkpoint") is not None:
            raise ConfigError("codec.checkpoint is for loading; training writes <run_dir>/<name>.pt "
                              "(train.ship=true also into checkpoints/)")
        self.codec = cls(**{**self.options, "entropy": "none"})  # the options checked; nothing to load
        s = self.settings
        for key in ("steps", "batch_size", "images"):
            if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
                raise ConfigError(f"codec.train.{key} for tofc must be an integer >= 1, got {s[key]!r}")
        for key, low in (("q_step", 0.0), ("temperature", 0.0)):
            if isinstance(s[key], bool) or not isinstance(s[key], (int, float)) or not s[key] > low:
                raise ConfigError(f"codec.train.{key} for tofc must be a number > 0, got {s[key]!r}")

    def setup(self, ctx: Any) -> TrainSetup:
        c, s = self.codec, self.settings
        self.ctx, self.task = ctx, ctx.task()
        c.bind(self.task)
        self.dim = dim = self.task.net.embed_dim
        self.n_train = n_train = min(int(s["images"]), len(ctx.train_set))
        heads = tuple(t.to(ctx.device) for t in head_tokens(c, self.task, ctx.train_set, n_train, ctx.seed))
        with torch.no_grad():  # DPC-KNN is training-free: merge every cached image once
            self.feats = torch.cat([dpc_knn_merge(heads[0][i:i + 500].float(), c.n_clusters, c.k).half()
                                    for i in range(0, n_train, 500)])
        self.labels = heads[1].clone()
        unlabelled = self.labels < 0
        if unlabelled.any():  # an unlabelled folder: the target is the uncompressed server's answer
            with torch.no_grad():
                answers = torch.cat([vit_logits_from(self.task.net, heads[0][i:i + 500].float(), c.split).argmax(-1)
                                     for i in range(0, n_train, 500)])
            self.labels[unlabelled] = answers[unlabelled]
        self.model = SelectiveHyperprior(dim, c.hyper_channels, c.hidden, c.n_experts, c.distribution,
                                         float(s["q_step"]), c.transform).to(ctx.device)
        init = self.feats[:INIT_IMAGES].float().reshape(-1, dim)
        if init.shape[0] < dim:  # a few images of a wide ViT: add their unmerged tokens to the PCA
            init = torch.cat([init, heads[0][:INIT_IMAGES].float().reshape(-1, dim)])
        self.model.init_from_data(init)
        self.server = self.task.net
        params = [p for n, p in self.model.named_parameters() if not n.endswith("quantiles")]
        groups = [{"params": params, "lr": s["lr"]}]
        modules = [self.model]
        if c.finetune_tail:
            self.server = copy.deepcopy(self.task.net)
            tail = codec_tail(self.server, c.split)
            for p in tail.parameters():
                p.requires_grad_(True)
            groups.append({"params": list(tail.parameters()), "lr": s["lr"] * 0.1})
            modules.append(self.server)
        self.bs = bs = min(int(s["batch_size"]), n_train)
        steps = ctx.steps(s["steps"])
        self.ce_fn = torch.nn.CrossEntropyLoss()
        return TrainSetup(groups, steps=steps, lr=s["lr"], warmup=max(1, steps // 20),
                          aux_params=[self.model.bottleneck.quantiles], aux_lr=s["aux_lr"],
                          batches=self._batches(ctx.generator), modules=modules)

    def _batches(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        """Indices into the cached tokens: a seeded permutation, reshuffled when it runs out."""
        order, pos = torch.randperm(self.n_train, generator=gen), 0
        while True:
            if pos + self.bs > self.n_train:
                order, pos = torch.randperm(self.n_train, generator=gen), 0
            yield order[pos:pos + self.bs]
            pos += self.bs

    def training_step(self, batch: torch.Tensor) -> Step:
        c, s = self.codec, self.settings
        tokens_hat, bits, weights, _ = self.model(self.feats[batch].float(), float(s["temperature"]))
        logits = vit_logits_from(self.server, tokens_hat, c.split)
        ce = self.ce_fn(logits, self.labels[batch])
        rate = bits.mean()
        balance = self.model.balance_loss(weights) if self.model.n_experts > 1 else rate.new_zeros(())
        loss = ce + c.lmbda * rate + float(s["balance_alpha"]) * balance
        return Step(loss, {"ce": ce.item(), "bytes": rate.item() / 8, "bal": balance.item()})

    def aux_loss(self) -> torch.Tensor:
        return self.model.bottleneck.loss()

    def exported_state(self) -> dict[str, torch.Tensor]:
        state = shipped_state(self.model)
        if self.codec.finetune_tail:
            state.update({f"tail.{k}": v for k, v in codec_tail(self.server, self.codec.split).state_dict().items()})
        return state

    def arch(self) -> dict[str, Any]:
        c = self.codec
        return {"split": c.split, "n_clusters": c.n_clusters, "k": c.k, "n_experts": c.n_experts,
                "distribution": c.distribution, "hyper_channels": c.hyper_channels, "hidden": c.hidden,
                "dim": self.dim, "finetune_tail": c.finetune_tail, "transform": c.transform,
                "train_images": self.n_train}

    def evaluate(self, weights: Weights, ctx: Any) -> dict[str, Any]:
        weights.arch = self.arch()
        codec = self.cls.from_weights(weights, **self.options)
        return evaluate_codec(codec, self.task, ctx.test_set(), batch_size=500)

    def describe(self, ctx: Any) -> tuple[str, dict[str, Any]]:
        c = self.codec
        return c.ckpt_name, {
            "kind": "codec", "family": "tofc", "point": c.point, "arch": self.arch(), "lmbda": c.lmbda,
            "data": f"{ctx.cfg.data.name} train split ({self.n_train} seeded-random of {len(ctx.train_set)} images, "
                    f"{ctx.steps(self.settings['steps'])} steps x {self.bs}), seed {ctx.seed}; server model "
                    f"{self.task.name} ({self.task.fingerprint[:12]})"}


def codec_tail(net: Any, split: int) -> Any:
    from .codec import tail_modules

    return tail_modules(net, split)
