"""The training contract: what a trainable codec (or task model) declares, and nothing more.

A trainable codec class has ``trainer(cfg) -> Trainer``; the framework's one loop (loop.py) owns
seeding, threads, the optimiser and warm-up/cosine schedule, the auxiliary optimiser (compressai's
quantile loss), gradient clipping, progress, the fp16 round trip, evaluation through real bytes
and the manifest entry. A trainer only says what is specific to its method:

* ``setup(ctx)``: build the networks and return a :class:`TrainSetup` (parameter groups, steps,
  learning rates, an optional batch iterator when batches are not the shuffled training images);
* ``training_step(batch)``: the method's loss (``Step``); ``aux_loss()``: the auxiliary loss or None;
* ``exported_state()``: the state dict that ships;
* ``evaluate(weights, ctx)``: metrics of those weights (after the fp16 round trip) through the
  codec's real encode -> bytes -> decode path (``common.evaluate_codec``);
* ``describe(ctx)``: the entry's name and metadata (kind, family, point, arch, data).

Settings come from one namespace, ``codec.train.*`` (``train.*`` for the task model and the global
seed/threads/max_steps/ship knobs), checked by :func:`settings` against the trainer's defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

import torch

from ..errors import ConfigError
from ..zoo import Weights


@dataclass
class TrainSetup:
    """What the loop optimises: Adam(W) over ``params`` at ``lr``, warm-up + cosine over ``steps``."""

    params: list[dict[str, Any]]
    steps: int
    lr: float
    warmup: int
    optimizer: str = "adam"                 # adam | adamw (weight decay per parameter group)
    aux_params: list[torch.nn.Parameter] = field(default_factory=list)
    aux_lr: float = 1e-3
    clip: float | None = None               # gradient-norm clip of ``params`` (None/0: off)
    batches: Iterator[Any] | None = None    # None: the shuffled training split, epoch after epoch
    batch_size: int = 64
    modules: list[torch.nn.Module] = field(default_factory=list)  # put in train() mode


@dataclass
class Step:
    """One step's loss and the numbers shown in the progress bar."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Trainer(Protocol):
    settings: dict[str, Any]

    def setup(self, ctx: Any) -> TrainSetup: ...

    def training_step(self, batch: Any) -> Step: ...

    def aux_loss(self) -> torch.Tensor | None: ...

    def exported_state(self) -> dict[str, torch.Tensor]: ...

    def evaluate(self, weights: Weights, ctx: Any) -> dict[str, Any]: ...

    def describe(self, ctx: Any) -> tuple[str, dict[str, Any]]: ...


def settings(given: Mapping[str, Any] | None, defaults: Mapping[str, Any], where: str = "codec.train") -> dict[str, Any]:
    """``defaults`` updated with ``given``; unknown keys are a one-line ConfigError naming the valid ones."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"{where} has no key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(f'{where}.{k}' for k in defaults)}")
    return {**defaults, **given}


def codec_options(cfg: Any) -> dict[str, Any]:
    """The ``codec.*`` options of a training config, without ``name`` and ``train``."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg.codec, resolve=True)
    return {k: v for k, v in options.items() if k not in ("name", "train")}
