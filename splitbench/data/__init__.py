"""Datasets: each yields ``(image uint8 CxHxW tensor, label int)``; label -1 means unlabelled.

Images stay uint8 until the task model normalises them, so image codecs see exactly the pixels a
camera would deliver and the raw payload is the real pixel buffer. Datasets come from the
``splitbench.datasets`` entry-point group (built-ins included; see splitbench.registry).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, DataError
from ..options import check, declared, open_ended
from ..registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset", group="splitbench.datasets")
IDENTITY_KEYS = ("contents",)  # added to a data config for cache keys (dataset_identity), not options


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    return DATASETS.register(name)


def build_dataset(cfg: Any, split: str | None = None, model: Any = None) -> Dataset:
    """Build the dataset named by ``cfg.name`` with the rest of ``cfg`` as options.

    ``split`` overrides ``cfg.split`` (training uses ``train``). ``cfg.limit`` keeps the first N
    samples, deterministically. ``model`` (the task model) is handed to datasets that take it, so
    they can follow its input size, channels, preprocessing and class names.
    """
    options = {k: v for k, v in dict(cfg).items() if k not in ("name", "limit", *IDENTITY_KEYS)}
    if split is not None:
        options["split"] = split
    factory = DATASETS.get(cfg["name"])
    if not open_ended(factory):  # the factory's signature is the declaration (splitbench.options)
        check(options, declared(factory), "data", cfg["name"])
    if model is not None and "model" in inspect.signature(factory).parameters:
        options["model"] = model
    dataset = factory(**options)
    limit = cfg.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or limit <= 0:
            raise ConfigError(f"data.limit must be a positive integer or null, got {limit!r}")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return dataset


def _base(dataset: Dataset) -> Dataset:
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def describe_data(dataset: Dataset) -> str:
    """How a training set names itself in a manifest entry: its own ``describe()``, else its size."""
    describe = getattr(_base(dataset), "describe", None)
    return describe() if callable(describe) else f"{len(dataset)} images"


def dataset_identity(dataset: Dataset) -> dict[str, Any]:
    """What identifies the samples beyond the config (an image folder's contents), for cache keys."""
    fingerprint = getattr(_base(dataset), "fingerprint", None)
    return {"contents": fingerprint} if fingerprint else {}


def check_fits(dataset: Dataset, data_name: str, model: Any) -> None:
    """One line, before any codec runs, when the data's images are not what the model takes."""
    if len(dataset) == 0:
        raise DataError(f"data {data_name!r} has no samples (check data.root and data.limit)")
    image = dataset[0][0]
    if tuple(image.shape) != tuple(model.input_size):
        got, want = "x".join(map(str, image.shape)), "x".join(map(str, model.input_size))
        raise DataError(f"data {data_name!r} gives {got} images (CxHxW) but model {model.name!r} takes {want}; "
                        f"pick a matching model, or set data.crop / data.channels (image folders)")
