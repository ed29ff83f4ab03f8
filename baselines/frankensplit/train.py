"""Training by head distillation: ``python -m splitbench.train codec=frankensplit codec.lmbda=L``.

Only the compression module trains; the server model stays frozen and is the teacher. The loss is
the paper's: per image, the sum of squared errors between the decoder's output and the teacher's
features at the split (the grey ViT: tokens after block ``split``; any other backbone:
``SplitBackbone.head``, tokens or feature maps), plus ``lmbda`` times the rate in bits (lambda weights the *rate*),
averaged over the batch. compressai's auxiliary quantile loss trains the entropy bottleneck's
medians (the framework's auxiliary optimiser). ``codec.train.kd_weight`` > 0 adds a KL term between
the frozen tail's predictions on the reconstructed and the teacher's tokens (off by default; the
paper uses head distillation alone). Settings: ``codec.train.*`` (DEFAULTS below).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from splitbench.errors import ConfigError
from splitbench.data import describe_data
from splitbench.train import Step, TrainSetup, augment, codec_options, evaluate_codec, settings
from splitbench.zoo import Weights, resolve

from .backbone import ARCH_KEY, arch_in_state, arch_tensor, derive_arch, split_of
from .model import FrankenSplitNet, encoder_stats
from .wire import NAME

DEFAULTS: dict[str, Any] = {"epochs": 1, "init": None, "batch_size": 64, "lr": 2e-3, "aux_lr": 1e-3,
                            "warmup": 100, "kd_weight": 0.0, "augment": False, "clip": 1.0}


class FrankenSplitTrainer:
    def __init__(self, cls: Any, cfg: Any) -> None:
        from . import check_options

        self.cls, self.cfg = cls, cfg
        self.settings = settings(cfg.codec.get("train"), DEFAULTS)
        self.options = codec_options(cfg)
        self.options.pop("checkpoint", None)
        o = self.options
        self.lmbda = float(o.get("lmbda", 0.128))
        self.prior, self.split = o.get("prior", "factorized"), o.get("split", 1)
        check_options(self.prior, self.split, o.get("lmbda", 0.128))

    def _arch(self, task: Any) -> Any:
        """The shipped layout for the grey ViT and a block count; else derived from the backbone's split."""
        from . import build_arch, check_server, is_grey_vit

        if isinstance(self.split, int) and is_grey_vit(task):
            arch = build_arch(self.prior, self.split, self.options.get("arch"), self.lmbda)
            check_server(arch, task)  # the server model fits the arch, before any training
            self.cut = None
            return arch
        unknown = sorted(set(self.options.get("arch") or {}) - {"channels", "latent", "hyper_latent", "decoder_blocks",
                                                                  "latent_block"})
        if unknown:
            raise ConfigError(f"codec.arch.{unknown[0]} is fixed by the backbone; settable: channels, latent, "
                              f"hyper_latent, decoder_blocks, latent_block")
        arch = derive_arch(task, self.prior, self.split, dict(self.options.get("arch") or {}))
        self.cut = split_of(task, arch.split)
        return arch

    def setup(self, ctx: Any) -> TrainSetup:
        s = self.settings
        self.ctx, self.task = ctx, ctx.task()
        self.arch = self._arch(self.task)
        self.split = self.arch.split
        self.net = FrankenSplitNet(self.arch)
        self.init_note = None
        if s["init"]:
            init = resolve(name=str(s["init"])) if not str(s["init"]).endswith(".pt") else resolve(path=s["init"])
            state = dict(init.state)
            stored = arch_in_state(state, init.source)
            if stored is not None:  # a generic point carries its arch: it must be the one trained here
                del state[ARCH_KEY]
                if stored.to_dict() != self.arch.to_dict():
                    raise ConfigError(f"codec.train.init {init.source} was trained with arch {stored.to_dict()}; "
                                      f"this training builds {self.arch.to_dict()}")
            try:
                self.net.load_weights(state)
            except (KeyError, RuntimeError) as err:
                raise init.misfit(f"{NAME} with arch {self.arch.to_dict()}", str(err)) from None
            self.init_note = f"{s['init']} (sha256 {init.fingerprint[:12]})"
        self.net.to(ctx.device)
        for p in self.net.parameters():
            p.requires_grad_(True)
        per_epoch = len(ctx.train_loader(s["batch_size"]))
        main = [p for n, p in self.net.named_parameters() if not n.endswith("quantiles")]
        aux = [p for n, p in self.net.named_parameters() if n.endswith("quantiles")]
        return TrainSetup([{"params": main}], steps=ctx.steps(int(s["epochs"] * per_epoch)), lr=s["lr"],
                          warmup=int(s["warmup"]), aux_params=aux, aux_lr=s["aux_lr"], clip=s["clip"],
                          batch_size=s["batch_size"], modules=[self.net])

    def _teacher(self, x: torch.Tensor) -> torch.Tensor:
        from splitbench.models.vit import vit_tokens_until

        return self.cut.head(x) if self.cut is not None else vit_tokens_until(self.task.net, x, self.split)

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        from splitbench.models.vit import vit_logits_from

        return self.cut.tail(features) if self.cut is not None else vit_logits_from(self.task.net, features, self.split)

    def training_step(self, batch: Any) -> Step:
        images, _ = batch
        if self.settings["augment"]:
            images = augment(images, self.ctx.generator)
        x = self.task.normalize(images)
        with torch.no_grad():
            teacher = self._teacher(x)
        tokens, bits = self.net(x)
        dist = (tokens - teacher).pow(2).flatten(1).sum(1).mean()
        rate = bits.mean()
        loss = dist + self.lmbda * rate
        kd = float(self.settings["kd_weight"])
        if kd:
            with torch.no_grad():
                target = F.log_softmax(self._logits(teacher), -1)
            pred = F.log_softmax(self._logits(tokens), -1)
            loss = loss + kd * F.kl_div(pred, target, log_target=True, reduction="batchmean")
        return Step(loss, {"sse": dist.item(), "bits": rate.item()})

    def aux_loss(self) -> torch.Tensor:
        return self.net.entropy.loss()

    def exported_state(self) -> dict[str, torch.Tensor]:
        if self.arch.generic:  # the arch travels with the weights: the file alone loads strictly
            return {**self.net.weights(), ARCH_KEY: arch_tensor(self.arch)}
        return self.net.weights()

    def evaluate(self, weights: Weights, ctx: Any) -> dict[str, Any]:
        codec = self.cls.from_weights(weights, **self.options)
        self.codec = codec
        return evaluate_codec(codec, self.task, ctx.test_set(), batch_size=500)

    def describe(self, ctx: Any) -> tuple[str, dict[str, Any]]:
        from . import checkpoint_name, generic_name

        a = self.arch
        point: dict[str, Any] = {"prior": a.prior, "split": a.split, "lmbda": self.lmbda}
        name = checkpoint_name(a.prior, a.split, self.lmbda)
        if a.generic:  # never shadows a shipped grey-ViT point; names the server model
            point["model"] = self.task.name
            name = generic_name(self.task.name, a.prior, a.split, self.lmbda)
        return name, {
            "kind": "codec", "family": "frankensplit", "point": point,
            "lmbda": self.lmbda, "prior": a.prior, "split": a.split, "arch": a.to_dict(), "init": self.init_note,
            "server_model": self.task.name, "server_model_sha256": self.task.fingerprint,
            "device_encoder": encoder_stats(self.net, self.task.input_size),
            "data": f"{ctx.cfg.data.name} train split ({describe_data(ctx.train_set)}), seed {ctx.seed}; "
                    f"metrics on the test split"}
