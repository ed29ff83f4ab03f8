"""The task models' trainer (``python -m splitbench.train [model=vit_edge]``): ViT cross-entropy.

AdamW with weight decay on matrices only (not norms, biases, position embedding or class token),
label smoothing, random shift/flip; settings are ``train.*`` (epochs, batch_size, lr, weight_decay,
warmup_epochs, label_smoothing). The entry's accuracy is measured on the fp16 weights as shipped.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from .common import augment, evaluate
from .protocol import Step, TrainSetup

KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing")


class TaskModelTrainer:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.settings = {k: cfg.train[k] for k in KEYS}
        self.model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        self.model_cfg["pretrained"] = False

    def _build(self) -> Any:
        from ..models import build_model

        return build_model(self.model_cfg)

    def setup(self, ctx: Any) -> TrainSetup:
        s = self.settings
        self.ctx, self.model = ctx, self._build().to(ctx.device)
        for p in self.model.parameters():
            p.requires_grad_(True)
        per_epoch = len(ctx.train_loader(s["batch_size"]))
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or "pos_embed" in n or "cls_token" in n else decay).append(p)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=s["label_smoothing"])
        return TrainSetup([{"params": decay, "weight_decay": s["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}], optimizer="adamw",
                          steps=ctx.steps(s["epochs"] * per_epoch), lr=s["lr"],
                          warmup=int(s["warmup_epochs"] * per_epoch), batch_size=s["batch_size"],
                          modules=[self.model])

    def training_step(self, batch: Any) -> Step:
        images, labels = batch
        loss = self.loss_fn(self.model(augment(images, self.ctx.generator)), labels)
        return Step(loss, {"loss": loss.item()})

    def aux_loss(self) -> None:
        return None

    def exported_state(self) -> dict[str, torch.Tensor]:
        return dict(self.model.net.state_dict())

    def evaluate(self, weights: Any, ctx: Any) -> dict[str, Any]:
        model = self._build()
        model.net.load_state_dict(weights.state, strict=True)
        model.to(ctx.device)
        test = ctx.test_set()
        return {"test_top1": round(evaluate(model, test), 4), "test_images": len(test)}

    def describe(self, ctx: Any) -> tuple[str, dict[str, Any]]:
        name = self.model.name
        return name, {"kind": "task_model", "family": name, "point": {}, "arch": self.model_cfg.get("arch"),
                      "data": f"{self.cfg.data.name} train split ({len(ctx.train_set)} images), seed {ctx.seed}"}
