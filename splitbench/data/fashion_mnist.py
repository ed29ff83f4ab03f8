"""Fashion-MNIST (70k real 28x28 grey images, 10 classes), read through torchvision's class.

The original gzip files are vendored under ``data/fashion-mnist`` (MIT licence). torchvision's
``FashionMNIST`` wants them unpacked in ``<root>/FashionMNIST/raw``; we unpack once into a cache
directory (atomically) and then let torchvision read them.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets import FashionMNIST

from ..errors import ConfigError, DataError
from ..zoo import sha256_file
from ..paths import FASHION_MNIST_DIR, cache_dir
from . import register_dataset

VENDORED = FASHION_MNIST_DIR
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _unpack_vendored(root: Path) -> None:
    """Unpack the vendored gzip files into ``root/FashionMNIST/raw`` (checked by sha256)."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).exists() for f in FILES):
        return
    sums = dict(line.split()[::-1] for line in (VENDORED / "SHA256SUMS").read_text().splitlines())
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        gz = VENDORED / f"{name}.gz"
        if not gz.exists():
            raise DataError(f"vendored Fashion-MNIST file {gz} is missing; restore it from git")
        if sha256_file(gz) != sums[gz.name]:
            raise DataError(f"vendored Fashion-MNIST file {gz} fails its SHA256SUMS check")
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        with gzip.open(gz, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, raw / name)


class TensorImages(Dataset):
    """An in-memory view of a torchvision MNIST-style dataset: uint8 1xHxW images, int labels."""

    def __init__(self, base: FashionMNIST) -> None:
        self.images = base.data.unsqueeze(1)  # N,1,28,28 uint8
        self.targets = base.targets
        self.classes = list(base.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


@register_dataset("fashion_mnist")
def fashion_mnist(split: str = "test", root: str | None = None) -> Dataset:
    """``root=None`` uses the vendored files; otherwise a torchvision-style FashionMNIST root."""
    if split not in ("train", "test"):
        raise ConfigError(f"data.split must be 'train' or 'test' for fashion_mnist, got {split!r}")
    if root is None:
        base_root = cache_dir() / "datasets"
        _unpack_vendored(base_root)
    else:
        base_root = Path(root)
        if not base_root.is_dir():
            raise DataError(f"data.root {str(base_root)!r} does not exist (expected a directory "
                            "holding FashionMNIST/raw/*-ubyte); use data.root=null for the vendored copy")
    try:
        base = FashionMNIST(str(base_root), train=(split == "train"), download=False)
    except RuntimeError as err:
        raise DataError(f"cannot read Fashion-MNIST under {base_root}: {err}") from None
    return TensorImages(base)
