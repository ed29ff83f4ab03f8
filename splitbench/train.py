"""Training entry point: ``python -m splitbench.train [codec=NAME] [overrides]``.

Without ``codec`` it trains the server task model (``model=vit_fmnist``) and ships it: the
checkpoint (fp16) goes to ``checkpoints/`` with a manifest entry holding its sha256, the command
that reproduces it, the data it saw and its test accuracy. With ``codec=NAME`` it trains that codec
against the frozen server model through the codec's own ``fit`` (see baselines/).
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .cli import guard_overrides, report_errors
from .data import build_dataset
from .models import build_model
from .models.checkpoints import save_shipped
from .paths import CHECKPOINT_DIR, CONF_DIR
from .training import augment, evaluate, loader, seed_everything, warmup_cosine


def reproduce_command() -> str:
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    return " ".join(["python -m splitbench.train", *map(shlex.quote, overrides)])


def train_task_model(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.train
    gen = seed_everything(t.seed)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["pretrained"] = False
    model = build_model(model_cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    train_set = build_dataset(cfg.data, split="train")
    test_set = build_dataset(cfg.data, split="test")
    dl = loader(train_set, t.batch_size, shuffle=True, generator=gen)
    steps = t.epochs * len(dl) if t.max_steps is None else int(t.max_steps)
    warmup = int(t.warmup_epochs * len(dl))
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "pos_embed" in n or "cls_token" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    step, start = 0, time.time()
    with tqdm(total=steps, desc=f"train {model.name}", unit="step", dynamic_ncols=True) as bar:
        while step < steps:
            model.train()
            for images, labels in dl:
                loss = loss_fn(model(augment(images, gen)), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=f"{step / len(dl):.2f}")
                if step >= steps:
                    break
    model.eval()
    with torch.no_grad():  # evaluate the weights as shipped (fp16), not the fp32 training copy
        for tensor in model.net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    acc = evaluate(model, test_set)
    minutes = (time.time() - start) / 60
    name = t.save_as or model.name
    meta = {
        "kind": "task_model", "model": model.name, "arch": model_cfg.get("arch"),
        "command": reproduce_command(), "data": f"{cfg.data.name} train split ({len(train_set)} images), "
        f"seed {t.seed}", "metrics": {"test_top1": round(acc, 4), "test_images": len(test_set)},
        "train_minutes_2cpu": round(minutes, 1), "steps": step,
    }
    out = Path(t.out_dir) if t.out_dir else CHECKPOINT_DIR
    state = {k: v for k, v in model.net.state_dict().items()}
    entry = save_shipped(name, state, meta, directory=out)
    print(f"{name}: test top-1 {acc:.4f} after {step} steps ({minutes:.1f} min); saved {out / entry['file']} "
          f"sha256 {entry['sha256'][:12]}")
    return entry


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@report_errors
def main(cfg: DictConfig) -> None:
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    if cfg.get("codec") is None:
        train_task_model(cfg)
        return
    from .codecs import CODECS, list_codecs

    list_codecs()
    cls = CODECS.get(cfg.codec.name)
    if not hasattr(cls, "fit"):
        from .errors import ConfigError

        trainable = [n for n in CODECS.names() if hasattr(CODECS.get(n), "fit")]
        raise ConfigError(f"codec {cfg.codec.name!r} has nothing to train; trainable codecs: "
                          f"{', '.join(trainable) or '(none)'}")
    cls.fit(cfg, command=reproduce_command())  # type: ignore[attr-defined]


if __name__ == "__main__":
    guard_overrides(sys.argv[1:], config_name="train")
    main()
