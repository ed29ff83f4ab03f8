"""Training and evaluation of the learned image codecs (``python -m splitbench.train codec=elic``).

Loss in compressai's convention: ``lmbda * 255**2 * MSE + bpp`` with bpp = -log2 likelihoods of y
and z per *original* pixel (padding is free) and MSE on the cropped reconstruction; the entropy
bottleneck's quantiles learn from compressai's aux loss with their own optimiser. The server model
plays no part in training; it only scores the result.

The shipped points are trained briefly on 2 CPU cores (a few minutes each; see the manifest's
``train_minutes_2cpu``), so they are far from converged: they are reference points, and
``codec.train.steps`` / ``codec.train.init`` (start from another checkpoint, e.g. a shipped point
at another lambda) let a user train longer. Metrics in the manifest are measured after the fp16
round trip, through the codec's real encode -> bytes -> decode path on the test split.
"""
from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from splitbench.data import build_dataset
from splitbench.errors import ConfigError
from splitbench.models import build_model
from splitbench.models.checkpoints import load_manifest, load_shipped, load_user_checkpoint, save_shipped
from splitbench.paths import CHECKPOINT_DIR
from splitbench.training import augment, loader, seed_everything, warmup_cosine

from . import nets
from .codec import psnr, shipped_name

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 2000,        # optimiser steps (cfg.train.max_steps overrides, for smoke tests)
    "batch_size": 32,
    "lr": 5e-4,           # Adam, linear warm-up then cosine decay
    "warmup": 100,
    "aux_lr": 1e-3,       # entropy-bottleneck quantiles (compressai's aux loss)
    "clip": 1.0,          # gradient-norm clip, as compressai's example trainer
    "init": None,         # start from a shipped name or a checkpoint path (same architecture)
    "eval_limit": None,   # test images for the manifest metrics (null: the whole test split)
    "log_every": 200,
}


def train_options(codec_cfg: dict[str, Any]) -> dict[str, Any]:
    given = dict(codec_cfg.get("train") or {})
    unknown = sorted(set(given) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(f"codec.train has no key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join('codec.train.' + k for k in TRAIN_DEFAULTS)}")
    return {**TRAIN_DEFAULTS, **given}


def rd_loss(net: nn.Module, x: torch.Tensor, pad: Any, crop: Any, lmbda: float) -> dict[str, torch.Tensor]:
    out = net(pad(x))
    x_hat = crop(out["x_hat"])
    n, _, h, w = x.shape
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    bpp = bits / (n * h * w)
    mse = torch.mean((x_hat - x) ** 2)
    return {"loss": lmbda * 255 ** 2 * mse + bpp, "bpp": bpp, "mse": mse}


def _initial_state(init: str) -> tuple[dict[str, torch.Tensor], str]:
    if init in load_manifest():
        state, entry = load_shipped(init)
        return state, f"{init} (sha256 {entry['sha256'][:12]})"
    return load_user_checkpoint(init), init


@torch.inference_mode()
def evaluate_codec(codec: Any, task: Any, dataset: Any, batch_size: int = 100,
                   check_images: int = 100) -> dict[str, Any]:
    """Accuracy, real bytes, estimated bits and PSNR over ``dataset`` through real streams.

    Uses the codec's batched round trip (real bytes, really decoded; fast enough for the whole
    test split on a CPU) and checks on the first ``check_images`` images that the per-image path
    the benchmark runs (device_forward -> encode -> decode -> server_forward) gives the same bytes.
    """
    codec.bind(task)
    correct = total = same = checked = 0
    nbytes = est = psnr_sum = 0.0
    for images, labels in loader(dataset, batch_size, shuffle=False):
        blobs, bits, decoded = codec.round_trip_batched(images)
        logits = task(decoded)
        correct += int((logits.argmax(-1) == labels).sum())
        nbytes += sum(len(b) for b in blobs)
        est += sum(bits)
        psnr_sum += sum(psnr(d, o) for d, o in zip(decoded, images))
        if checked < check_images:
            part = images[: check_images - checked]
            payloads = codec.encode(codec.device_forward(part))
            codec.server_forward(codec.decode([p.data for p in payloads]))  # must decode
            same += sum(p.data == b for p, b in zip(payloads, blobs))
            checked += len(part)
        total += len(labels)
    c, h, w = task.input_size
    return {"test_top1": round(correct / total, 4), "bytes_per_image": round(nbytes / total, 2),
            "bpp": round(nbytes * 8 / total / (h * w), 4), "est_bits_per_image": round(est / total, 1),
            "psnr": round(psnr_sum / total, 2), "test_images": total,
            "per_image_path_same_bytes": f"{same}/{checked}"}


def fit_codec(cls: Any, cfg: Any, command: str) -> dict[str, Any]:
    opts = OmegaConf.to_container(cfg.codec, resolve=True)
    opts.pop("name", None)
    tr = train_options(opts)
    lmbda = float(opts.get("lmbda", 0))
    if not lmbda > 0:
        raise ConfigError(f"codec.lmbda must be a positive number to train {cls.family}, got {opts.get('lmbda')!r}")
    if opts.get("checkpoint"):
        raise ConfigError("codec.checkpoint is for running a trained model; to start training from one, "
                          "use codec.train.init=PATH_OR_SHIPPED_NAME")
    arch = {k: (list(opts[k]) if k == "context" else opts[k]) for k in cls.train_arch_keys if k in opts}
    defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()}
    arch = {k: arch.get(k, list(defaults[k]) if k == "context" else defaults[k]) for k in cls.train_arch_keys}
    gen = seed_everything(int(cfg.train.seed))
    net = cls.build(arch)
    init_note = None
    if tr["init"]:
        state, init_note = _initial_state(str(tr["init"]))
        nets.load_weights(net, state, init_note)
    net.train()

    steps = int(cfg.train.max_steps) if cfg.train.max_steps is not None else int(tr["steps"])
    train_set = build_dataset(cfg.data, split="train")
    dl = loader(train_set, int(tr["batch_size"]), shuffle=True, generator=gen)
    main = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main, lr=float(tr["lr"]))
    aux_opt = torch.optim.Adam(aux, lr=float(tr["aux_lr"]))
    warmup = min(int(tr["warmup"]), max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup))

    # padding/cropping exactly as the codec does (a codec object needs the task model; mirror it)
    mult = 2 ** (arch["stages"] + 2)
    c, h, w = next(iter(dl))[0].shape[1:]
    hp, wp = math.ceil(h / mult) * mult, math.ceil(w / mult) * mult
    top, left = (hp - h) // 2, (wp - w) // 2

    def pad(x: torch.Tensor) -> torch.Tensor:
        if arch["channels"] == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return torch.nn.functional.pad(x, (left, wp - w - left, top, hp - h - top))

    def crop(x_hat: torch.Tensor) -> torch.Tensor:
        x_hat = x_hat[..., top:top + h, left:left + w]
        return x_hat.mean(1, keepdim=True) if c == 1 and x_hat.shape[1] == 3 else x_hat

    step, start, cpu0 = 0, time.time(), time.process_time()
    running: dict[str, float] = {}
    print(f"train {cls.family} lmbda={lmbda:g} arch={arch} steps={steps} batch={tr['batch_size']} "
          f"params={sum(p.numel() for p in net.parameters())}", flush=True)
    while step < steps:
        for images, _ in dl:
            x = augment(images, gen).float() / 255.0
            out = rd_loss(net, x, pad, crop, lmbda)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if tr["clip"]:
                torch.nn.utils.clip_grad_norm_(main, float(tr["clip"]))
            opt.step()
            sched.step()
            aux_loss = net.aux_loss()
            aux_opt.zero_grad(set_to_none=True)
            aux_loss.backward()
            aux_opt.step()
            step += 1
            for k, v in out.items():
                running[k] = running.get(k, 0.0) + v.item()
            if step % int(tr["log_every"]) == 0 or step == steps:
                n = int(tr["log_every"]) if step % int(tr["log_every"]) == 0 else step % int(tr["log_every"])
                mse = running["mse"] / n
                print(f"step {step}/{steps} loss {running['loss'] / n:.4f} bpp {running['bpp'] / n:.4f} "
                      f"psnr {10 * math.log10(1 / max(mse, 1e-12)):.2f} aux {aux_loss.item():.2f} "
                      f"[{(time.time() - start) / 60:.1f} min]", flush=True)
                running = {}
            if step >= steps:
                break
    train_minutes = (time.time() - start) / 60
    train_cpu = (time.process_time() - cpu0) / 60

    # what ships is fp16: evaluate exactly that
    state = nets.shippable_state(net)
    shipped = cls.build(arch)
    nets.load_weights(shipped, {k: v.half().float() for k, v in state.items()}, "trained weights (fp16)")
    name = cfg.train.save_as or shipped_name(cls.family, lmbda)
    codec = cls.from_net(shipped, lmbda, opts, weights=f"training:{name}")
    task = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg["split"] = "test"
    if tr["eval_limit"]:
        data_cfg["limit"] = int(tr["eval_limit"])
    test_set = build_dataset(data_cfg)
    t0 = time.time()
    metrics = evaluate_codec(codec, task, test_set)
    eval_minutes = (time.time() - t0) / 60
    meta = {
        "kind": "learned_image_codec", "codec": cls.family, "lmbda": lmbda, "arch": arch,
        "command": command, "data": f"{cfg.data.name} train split ({len(train_set)} images, random shift/flip), "
        f"seed {cfg.train.seed}; metrics on the test split via real bytes, server {task.name} "
        f"(sha256 {str(task.fingerprint)[:12]})",
        "metrics": metrics, "steps": step, "batch_size": int(tr["batch_size"]), "lr": float(tr["lr"]),
        "init": init_note, "train_minutes_2cpu": round(train_minutes, 1),
        "train_cpu_minutes": round(train_cpu, 1), "eval_minutes": round(eval_minutes, 1),
        "params": sum(v.numel() for v in state.values()),
    }
    out_dir = Path(cfg.train.out_dir) if cfg.train.out_dir else CHECKPOINT_DIR
    entry = save_shipped(name, state, meta, directory=out_dir)
    print(f"{name}: top-1 {metrics['test_top1']:.4f}, {metrics['bytes_per_image']:.1f} bytes/image "
          f"({metrics['bpp']:.3f} bpp, estimated {metrics['est_bits_per_image'] / 8:.1f} bytes), PSNR "
          f"{metrics['psnr']:.2f} dB on {metrics['test_images']} test images; {step} steps in "
          f"{train_minutes:.1f} min; saved {out_dir / entry['file']} ({entry['size'] / 1e6:.2f} MB) "
          f"sha256 {entry['sha256'][:12]}", flush=True)
    return entry
