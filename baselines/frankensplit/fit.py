"""Training by head distillation: ``python -m splitbench.train codec=frankensplit codec.lmbda=L``.

Only the compression module trains; the server ViT stays frozen and is the teacher. The loss is
the paper's: per image, the sum of squared errors between the decoder's tokens and the teacher's
tokens after block ``split``, plus ``lmbda`` times the rate in bits (lambda weights the *rate*),
averaged over the batch. compressai's auxiliary quantile loss trains the entropy bottleneck's
medians with its own optimiser. Optionally ``codec.fit.kd_weight`` adds a KL term between the
frozen tail's predictions on the reconstructed and the teacher's tokens (off by default; the paper
uses head distillation alone).

Settings come from ``codec.fit`` (epochs, batch_size, lr, aux_lr, warmup_steps, kd_weight,
augment, clip); ``train.seed``, ``train.threads``, ``train.max_steps``, ``train.out_dir`` and
``train.save_as`` apply as for every training. After training, the weights are round-tripped
through fp16 (as shipped) and evaluated on the full test split through the real encode/decode
path, so the manifest's accuracy and bytes are those the runner measures.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm

from splitbench.data import build_dataset
from splitbench.errors import ConfigError
from splitbench.models import build_model
from splitbench.models.checkpoints import save_shipped
from splitbench.models.vit import vit_logits_from, vit_tokens_until
from splitbench.paths import CHECKPOINT_DIR
from splitbench.training import augment, evaluate_codec, loader, seed_everything, warmup_cosine

from .model import FrankenSplitNet, encoder_stats

FIT_DEFAULTS: dict[str, Any] = {"epochs": 1, "init": None, "batch_size": 64, "lr": 2e-3, "aux_lr": 1e-3,
                                "warmup_steps": 100, "kd_weight": 0.0, "augment": False, "clip": 1.0}


def fit_settings(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(FIT_DEFAULTS))
    if unknown:
        raise ConfigError(f"codec.fit has no key(s) {', '.join(unknown)}; valid: {', '.join(FIT_DEFAULTS)}")
    return {**FIT_DEFAULTS, **options}


def fit(cls: Any, cfg: Any, command: str) -> dict[str, Any]:
    """Train one operating point and ship it (checkpoint + manifest entry); returns the entry."""
    from . import build_arch

    t = cfg.train
    options = {k: v for k, v in OmegaConf.to_container(cfg.codec, resolve=True).items() if k != "name"}
    settings = fit_settings(options.pop("fit", None) or {})
    options.pop("checkpoint", None)
    gen = seed_everything(t.seed)
    task = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    lmbda = options.get("lmbda", 0.128)
    arch = build_arch(options.get("prior", "factorized"), options.get("split", 1), options.get("arch"), lmbda)
    probe = cls.from_net(FrankenSplitNet(arch), lmbda)
    probe.bind(task)  # validates the server model against the arch before any training
    net, lmbda, split = probe.net, probe.lmbda, probe.split
    if settings["init"]:
        net.load_weights(_init_weights(str(settings["init"])))
    for p in net.parameters():
        p.requires_grad_(True)

    train_set = build_dataset(cfg.data, split="train")
    test_set = build_dataset(cfg.data, split="test")
    dl = loader(train_set, int(settings["batch_size"]), shuffle=True, generator=gen)
    steps = int(settings["epochs"] * len(dl)) if t.max_steps is None else int(t.max_steps)
    aux = [p for n, p in net.named_parameters() if n.endswith("quantiles")]
    main = [p for n, p in net.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(main, lr=settings["lr"])
    aux_opt = torch.optim.Adam(aux, lr=settings["aux_lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, int(settings["warmup_steps"])))
    kd = float(settings["kd_weight"])

    step, start = 0, time.time()
    net.train()
    with tqdm(total=steps, desc=f"train {_name(probe)}", unit="step", dynamic_ncols=True) as bar:
        while step < steps:
            for images, _ in dl:
                if settings["augment"]:
                    images = augment(images, gen)
                x = task.normalize(images)
                with torch.no_grad():
                    teacher = vit_tokens_until(task.net, x, split)
                tokens, bits = net(x)
                dist = (tokens - teacher).pow(2).flatten(1).sum(1).mean()
                rate = bits.mean()
                loss = dist + lmbda * rate
                if kd:
                    with torch.no_grad():
                        target = F.log_softmax(vit_logits_from(task.net, teacher, split), -1)
                    pred = F.log_softmax(vit_logits_from(task.net, tokens, split), -1)
                    loss = loss + kd * F.kl_div(pred, target, log_target=True, reduction="batchmean")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(main, settings["clip"])
                opt.step()
                sched.step()
                aux_loss = net.entropy.loss()
                aux_opt.zero_grad(set_to_none=True)
                aux_loss.backward()
                aux_opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(sse=f"{dist.item():.1f}", bits=f"{rate.item():.0f}", epoch=f"{step / len(dl):.2f}")
                if step >= steps:
                    break
    minutes = (time.time() - start) / 60

    # Evaluate exactly what ships: fp16 weights, rebuilt CDF tables, real bytes.
    shipped = FrankenSplitNet(net.arch)
    shipped.load_weights({k: v.half().float() for k, v in net.weights().items()})
    codec = cls.from_net(shipped, lmbda)
    codec.bind(task)
    metrics = evaluate_codec(codec, test_set)
    name = t.save_as or _name(codec)
    meta = {
        "kind": "codec", "codec": "frankensplit", "lmbda": lmbda, "prior": net.arch.prior, "split": split,
        "arch": net.arch.to_dict(), "server_model": task.name, "server_model_sha256": task.fingerprint,
        "command": command, "data": f"{cfg.data.name} train split ({len(train_set)} images), seed {t.seed}; "
        f"metrics on the test split", "metrics": metrics, "device_encoder": encoder_stats(shipped, task.input_size),
        "fit": settings, "steps": step, "train_minutes_2cpu": round(minutes, 1),
        "train_threads": torch.get_num_threads(),
    }
    out = Path(t.out_dir) if t.out_dir else CHECKPOINT_DIR
    entry = save_shipped(name, shipped.weights(), meta, directory=out)
    print(f"{name}: test top-1 {metrics['test_top1']:.4f}, {metrics['bytes_per_image']:.1f} bytes/image "
          f"(estimated {metrics['est_bits_per_image'] / 8:.1f}) after {step} steps ({minutes:.1f} min); "
          f"saved {out / entry['file']} sha256 {entry['sha256'][:12]}")
    return entry


def _init_weights(init: str) -> dict[str, torch.Tensor]:
    """``codec.fit.init``: a shipped manifest name (sha256-checked) or a checkpoint path."""
    from splitbench.models.checkpoints import load_manifest, load_shipped, load_user_checkpoint

    if init in load_manifest():
        return load_shipped(init)[0]
    if Path(init).suffix == ".pt":
        return load_user_checkpoint(init)
    raise ConfigError(f"codec.fit.init={init!r} is neither a shipped checkpoint name nor a .pt path")


def _name(codec: Any) -> str:
    from . import checkpoint_name

    return checkpoint_name(codec.prior, codec.split, codec.lmbda)
