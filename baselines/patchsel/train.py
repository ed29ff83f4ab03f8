"""Optional: fine-tune the server ViT for kept-patch inputs (``server_weights=vit_fmnist_patchdrop``).

The shipped server ViT was trained on full images; patch selection shows it only the tokens the
edge kept. This adapts a copy of it to that input: every batch keeps the top-k patches by the edge
model's attention score (k uniform in [K_MIN, P], a quarter of batches keep all P so full-image
accuracy is not forgotten), with the task's cross-entropy. The result ships as its own checkpoint
and is used only when ``codec.server_weights`` names it; the default codec runs the stock server.

    python -m splitbench.train codec=patchsel codec.train.epochs=2 codec.train.lr=0.0005 \
        codec.train.warmup_epochs=0.1 train.threads=1
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from splitbench.models import build_model
from splitbench.train import Step, TrainSetup, augment, codec_options, evaluate, evaluate_codec, settings
from splitbench.zoo import Weights

from .attention import edge_forward
from .server import grid_of, kept_logits

K_MIN = 4          # fewest patches a training batch keeps
P_FULL = 0.25      # share of batches that keep every patch
DEFAULT_NAME = "vit_fmnist_patchdrop"
DEFAULTS: dict[str, Any] = {"epochs": 2, "batch_size": 128, "lr": 5e-4, "weight_decay": 0.05,
                            "warmup_epochs": 0.1, "label_smoothing": 0.1}  # AdamW, warm-up + cosine


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, P, C, p, p), patches in row-major grid order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, -1, c, patch, patch)


class PatchDropTrainer:
    def __init__(self, cls: Any, cfg: Any) -> None:
        self.cls, self.cfg = cls, cfg
        self.settings = settings(cfg.codec.get("train"), DEFAULTS)
        self.options = {k: v for k, v in codec_options(cfg).items() if k != "server_weights"}

    def setup(self, ctx: Any) -> TrainSetup:
        s = self.settings
        self.ctx = ctx
        self.reference = self.cls(**self.options).to(ctx.device)  # loads the edge model, checks the options
        self.edge = self.reference.edge
        self.server = build_model(OmegaConf.to_container(ctx.cfg.model, resolve=True)).to(ctx.device)
        self.grid = grid_of(self.server.net, self.server.input_size, f"server model {self.server.name!r}")
        for p in self.server.parameters():
            p.requires_grad_(True)
        per_epoch = len(ctx.train_loader(s["batch_size"]))
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=s["label_smoothing"])
        return TrainSetup([{"params": list(self.server.parameters()), "weight_decay": s["weight_decay"]}],
                          optimizer="adamw", steps=ctx.steps(int(s["epochs"] * per_epoch)), lr=s["lr"],
                          warmup=int(s["warmup_epochs"] * per_epoch), batch_size=s["batch_size"],
                          modules=[self.server])

    def training_step(self, batch: Any) -> Step:
        gen, grid = self.ctx.generator, self.grid
        images, labels = batch
        images = augment(images, gen)
        k = grid.patches if torch.rand(1, generator=gen).item() < P_FULL else int(
            torch.randint(K_MIN, grid.patches + 1, (1,), generator=gen))
        with torch.no_grad():
            _, scores = edge_forward(self.edge.net, self.edge.normalize(images), self.reference.score)
        idx = scores.topk(k, dim=-1).indices.sort(dim=-1).values
        patches = patchify(self.server.normalize(images), grid.patch)
        kept = torch.gather(patches, 1, idx.view(*idx.shape, 1, 1, 1).expand(-1, -1, *patches.shape[2:]))
        loss = self.loss_fn(kept_logits(self.server.net, kept, idx), labels)
        return Step(loss, {"loss": loss.item(), "k": k})

    def aux_loss(self) -> None:
        return None

    def exported_state(self) -> dict[str, torch.Tensor]:
        return dict(self.server.net.state_dict())

    def evaluate(self, weights: Weights, ctx: Any) -> dict[str, Any]:
        server = build_model(OmegaConf.to_container(ctx.cfg.model, resolve=True))
        server.net.load_state_dict(weights.state, strict=True)
        server.to(ctx.device)
        test = ctx.test_set()
        return {"full_image_top1": round(evaluate(server, test), 4),
                **evaluate_codec(self.reference, server, test, batch_size=500), "codec_options": self.options}

    def describe(self, ctx: Any) -> tuple[str, dict[str, Any]]:
        return DEFAULT_NAME, {
            "kind": "task_model", "family": self.server.name, "point": {"finetune": "patchdrop"},
            "trainer": "patchsel", "k_min": K_MIN, "p_full": P_FULL,
            "data": f"{ctx.cfg.data.name} train split ({len(ctx.train_set)} images), seed {ctx.seed}; starts "
                    f"from the shipped {self.server.name}"}


__all__ = ["PatchDropTrainer", "patchify", "DEFAULT_NAME"]
