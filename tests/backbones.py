"""Shared helpers for tests on timm backbones other than the shipped grey ViTs (no hub: random
weights saved as state dicts) and a tiny 224x224 RGB folder made from real photos."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def make_world(root: Path, models: tuple[str, ...]) -> Path:
    """``<model>.pt`` random-weight state dicts and train/ + val/ folders of 4 RGB photos each."""
    import timm

    from splitbench.data.photos import photo_paths

    for name in models:
        torch.manual_seed(0)
        torch.save(timm.create_model(name, pretrained=False).state_dict(), root / f"{name}.pt")
    photos = photo_paths()
    assert len(photos) >= 8
    for split, first in (("train", 0), ("val", 4)):
        for i in range(4):
            folder = root / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.open(photos[first + i]).convert("RGB").resize((256, 256)).save(folder / f"{i}.png")
    return root


def model_overrides(world: Path, name: str) -> list[str]:
    return ["model=timm", f"model.name={name}", f"model.checkpoint={world / (name + '.pt')}", "model.pretrained=false"]


def task(world: Path, name: str):
    from splitbench.models import build_model

    return build_model({"name": name, "checkpoint": str(world / f"{name}.pt"), "pretrained": False})


def compose_cfg(config: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from splitbench.paths import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config, overrides=overrides)
