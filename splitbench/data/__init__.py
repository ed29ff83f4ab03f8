"""Datasets: each yields ``(image uint8 CxHxW tensor, label int)``; label -1 means unlabelled.

Images stay uint8 until the task model normalises them, so image codecs see exactly the pixels a
camera would deliver and the raw payload is the real pixel buffer. Datasets come from the
``splitbench.datasets`` entry-point group (built-ins included; see splitbench.registry).
"""
from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset, Subset

from ..errors import ConfigError
from ..registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset", group="splitbench.datasets")


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    return DATASETS.register(name)


def build_dataset(cfg: Any, split: str | None = None) -> Dataset:
    """Build the dataset named by ``cfg.name`` with the rest of ``cfg`` as options.

    ``split`` overrides ``cfg.split`` (training uses ``train``). ``cfg.limit`` keeps the first N
    samples, deterministically.
    """
    options = {k: v for k, v in dict(cfg).items() if k not in ("name", "limit")}
    if split is not None:
        options["split"] = split
    dataset = DATASETS.get(cfg["name"])(**options)
    limit = cfg.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or limit <= 0:
            raise ConfigError(f"data.limit must be a positive integer or null, got {limit!r}")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return dataset


def dataset_classes(dataset: Dataset) -> list[str] | None:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return getattr(base, "classes", None)
