"""A user's own images in torchvision's ImageFolder layout (e.g. an ImageNet val tree).

Preprocessing follows the split-computing convention (sc2bench lineage): resize the short side to
``resize``, centre-crop ``crop`` x ``crop``; the crop is what the device sees and codes.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from ..errors import DataError
from . import register_dataset


def camera_transform(resize: int, crop: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.PILToTensor(),
    ])


@register_dataset("imagefolder")
def imagefolder(root: str | None = None, split: str = "val", resize: int = 256, crop: int = 224) -> Dataset:
    if root is None:
        raise DataError("data=imagefolder needs data.root=DIR (a folder of class subfolders of images)")
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"data.root {root!r} does not exist; give a folder of class subfolders of images")
    try:
        return ImageFolder(str(path), transform=camera_transform(resize, crop))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"data.root {root!r} is not an ImageFolder tree: {err}") from None
