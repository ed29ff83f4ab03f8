"""Training of the learned image codecs: ``python -m splitbench.train codec=elic codec.lmbda=L``.

Loss in compressai's convention: ``lmbda * 255**2 * MSE + bpp`` with bpp = -log2 likelihoods of y
and z per *original* pixel (padding is free) and MSE on the cropped reconstruction; the entropy
bottleneck's quantiles learn from compressai's aux loss (the framework's auxiliary optimiser). The
server model plays no part in training; it only scores the result. The transforms are fully
convolutional, so ``codec.train.crop`` may train on random patches smaller than the images (as
compressai's examples train on 256x256 patches); evaluation always codes whole images.

The shipped points are trained briefly on 2 CPU cores (a few minutes each; see the manifest's
``train_minutes_2cpu``), so they are far from converged: they are reference points, and
``codec.train.steps`` / ``codec.train.init`` (start from another checkpoint, e.g. a shipped point
at another lambda) let a user train longer.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from splitbench.errors import ConfigError
from splitbench.data import describe_data
from splitbench.train import Step, TrainSetup, augment, codec_options, evaluate_codec, settings
from splitbench.zoo import Weights, resolve

from . import nets
from .codec import GREY_LAYOUT, model_arch, shipped_name

DEFAULTS: dict[str, Any] = {
    "steps": 2000,        # optimiser steps (train.max_steps overrides, for smoke tests)
    "batch_size": 32,
    "lr": 5e-4,           # Adam, linear warm-up then cosine decay
    "warmup": 100,
    "aux_lr": 1e-3,       # entropy-bottleneck quantiles (compressai's aux loss)
    "clip": 1.0,          # gradient-norm clip, as compressai's example trainer
    "init": None,         # start from a shipped name or a checkpoint path (same architecture)
    "eval_limit": None,   # test images for the manifest metrics (null: the whole test split)
    "crop": None,         # train on random crop x crop patches of the (shifted) images; null: whole images
}


def rd_loss(net: torch.nn.Module, x: torch.Tensor, pad: Any, crop: Any, lmbda: float) -> dict[str, torch.Tensor]:
    out = net(pad(x))
    x_hat = crop(out["x_hat"])
    n, _, h, w = x.shape
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    bpp = bits / (n * h * w)
    mse = torch.mean((x_hat - x) ** 2)
    return {"loss": lmbda * 255 ** 2 * mse + bpp, "bpp": bpp, "mse": mse}


class LearnedImageTrainer:
    def __init__(self, cls: Any, cfg: Any) -> None:
        self.cls, self.cfg = cls, cfg
        self.settings = settings(cfg.codec.get("train"), DEFAULTS)
        self.options = codec_options(cfg)
        self.lmbda = float(self.options.get("lmbda", 0))
        if not self.lmbda > 0:
            raise ConfigError(f"codec.lmbda must be a positive number to train {cls.family}, "
                              f"got {self.options.get('lmbda')!r}")
        if self.options.get("checkpoint"):
            raise ConfigError("codec.checkpoint is for running a trained model; to start training from one, "
                              "use codec.train.init=PATH_OR_SHIPPED_NAME")
        defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()}
        self.arch = {k: list(self.options.get(k, defaults[k])) if k == "context" else self.options.get(k, defaults[k])
                     for k in cls.train_arch_keys}

    def setup(self, ctx: Any) -> TrainSetup:
        if self.arch.get("channels") is None or self.arch.get("stages") is None:
            with torch.random.fork_rng():  # building the task model must not move the init's RNG
                self.arch = model_arch(self.arch, ctx.task().input_size)
        s, arch = self.settings, self.arch
        self.ctx = ctx
        self.net = self.cls.build(arch)
        self.init_note = None
        if s["init"]:
            init = resolve(path=s["init"]) if str(s["init"]).endswith(".pt") else resolve(name=str(s["init"]))
            nets.load_weights(self.net, init.state, init.source)
            self.init_note = f"{s['init']} (sha256 {init.fingerprint[:12]})" if init.entry else str(s["init"])
        self.net.to(ctx.device)
        steps = ctx.steps(s["steps"])
        dl = ctx.train_loader(s["batch_size"])
        # padding/cropping exactly as the codec does (the codec object needs the task model; mirror it)
        mult = 2 ** (arch["stages"] + 2)
        c, h, w = next(iter(dl))[0].shape[1:]
        self.patch = s["crop"]
        if self.patch is not None:
            if isinstance(self.patch, bool) or not isinstance(self.patch, int) or not 1 <= self.patch <= min(h, w):
                raise ConfigError(f"codec.train.crop for {self.cls.family} must be null or an integer in "
                                  f"[1, {min(h, w)}] (the training images are {h}x{w}), got {self.patch!r}")
            h = w = self.patch
        hp, wp = math.ceil(h / mult) * mult, math.ceil(w / mult) * mult
        top, left = (hp - h) // 2, (wp - w) // 2

        def pad(x: torch.Tensor) -> torch.Tensor:
            if arch["channels"] == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            return torch.nn.functional.pad(x, (left, wp - w - left, top, hp - h - top))

        def crop(x_hat: torch.Tensor) -> torch.Tensor:
            x_hat = x_hat[..., top:top + h, left:left + w]
            return x_hat.mean(1, keepdim=True) if c == 1 and x_hat.shape[1] == 3 else x_hat

        self.pad, self.crop = pad, crop
        main = [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]
        return TrainSetup([{"params": main}], steps=steps, lr=float(s["lr"]),
                          warmup=min(int(s["warmup"]), max(1, steps // 10)), aux_params=aux,
                          aux_lr=float(s["aux_lr"]), clip=s["clip"], batch_size=s["batch_size"], modules=[self.net])

    def _random_patches(self, images: torch.Tensor) -> torch.Tensor:
        """One seeded random ``crop`` x ``crop`` patch per image (``codec.train.crop``)."""
        n, _, h, w = images.shape
        size, gen = self.patch, self.ctx.generator
        top = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
        left = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
        return torch.stack([im[:, t:t + size, l:l + size] for im, t, l in zip(images, top, left)])

    def training_step(self, batch: Any) -> Step:
        images = augment(batch[0], self.ctx.generator)
        if self.patch is not None:
            images = self._random_patches(images)
        x = images.float() / 255.0
        out = rd_loss(self.net, x, self.pad, self.crop, self.lmbda)
        psnr = 10 * math.log10(1 / max(out["mse"].item(), 1e-12))
        return Step(out["loss"], {"loss": out["loss"].item(), "bpp": out["bpp"].item(), "psnr": psnr})

    def aux_loss(self) -> torch.Tensor:
        return self.net.aux_loss()

    def exported_state(self) -> dict[str, torch.Tensor]:
        return nets.shippable_state(self.net)

    def evaluate(self, weights: Weights, ctx: Any) -> dict[str, Any]:
        codec = self.cls.from_weights(weights, **self.options)
        self.task = ctx.task()
        return evaluate_codec(codec, self.task, ctx.test_set(self.settings["eval_limit"]))

    def describe(self, ctx: Any) -> tuple[str, dict[str, Any]]:
        point: dict[str, Any] = {"lmbda": self.lmbda}
        name = shipped_name(self.cls.family, self.lmbda)
        if (self.arch["channels"], self.arch["stages"]) != GREY_LAYOUT:  # another model's point: never
            point["model"] = ctx.cfg.model.name                          # shadows the grey suite's
            name = shipped_name(self.cls.family, self.lmbda, ctx.cfg.model.name)
        return name, {
            "kind": "codec", "family": self.cls.family, "point": point, "lmbda": self.lmbda,
            "arch": self.arch, "init": self.init_note, "params": sum(p.numel() for p in self.net.parameters()),
            "data": f"{ctx.cfg.data.name} train split ({describe_data(ctx.train_set)}, random shift/flip"
                    f"{f', random {self.patch}x{self.patch} patches' if self.patch else ''}), "
                    f"seed {ctx.seed}; metrics on the test split via real bytes, server {ctx.cfg.model.name}"}
