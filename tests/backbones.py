"""Shared helpers for tests on timm backbones other than the shipped grey ViTs (no hub: random
weights saved as state dicts) and a tiny 224x224 RGB folder made from real photos."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def make_world(root: Path, models: tuple[str, ...], images: int = 4, classes: tuple[str, ...] = ("c0", "c1"),
               half: bool = False) -> Path:
    """``<model>.pt`` random-weight state dicts (``half``: stored fp16, half the bytes to write and hash)
    and train/ + val/ folders of ``images`` RGB photos each, spread over the class folders ``classes``."""
    import timm

    from splitbench.data.photos import photo_paths

    for name in models:
        torch.manual_seed(0)
        state = timm.create_model(name, pretrained=False).state_dict()
        torch.save({k: v.half() if half and v.is_floating_point() else v for k, v in state.items()}, root / f"{name}.pt")
    photos = photo_paths()
    assert len(photos) >= 2 * images
    for split, first in (("train", 0), ("val", images)):
        for i in range(images):
            folder = root / split / classes[i % len(classes)]
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
