"""``python -m splitbench.train [codec=NAME] [overrides]``: train, into the run directory.

Without ``codec`` it trains the task model ``model=...`` (vit_fmnist, vit_edge); with ``codec=NAME``
that codec's trainer (baselines/<codec>/train.py) against the frozen server model. The result and
its manifest entry go to the run directory (``results/train/<time>/``, or ``train.run_dir``);
``train.ship=true`` also puts them into ``checkpoints/`` (``train.ship_dir`` elsewhere).
"""
from __future__ import annotations

import shlex
import sys

import hydra
from omegaconf import DictConfig

from ..cli import guard_overrides, report_errors
from ..paths import CONF_DIR
from .loop import run_training


def reproduce_command() -> str:
    """The command line that reproduces this run (Hydra's overrides, quoted)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task
                 if o.split("=")[0] not in ("train.ship", "train.ship_dir", "train.run_dir")]
    return " ".join(["python -m splitbench.train", *map(shlex.quote, overrides)])


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@report_errors
def main(cfg: DictConfig) -> None:
    run_training(cfg, reproduce_command())


def cli() -> None:
    """The command line: one-line errors for bad overrides, then Hydra (tests call this in-process)."""
    guard_overrides(sys.argv[1:], config_name="train")
    main()


if __name__ == "__main__":
    cli()
