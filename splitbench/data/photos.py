"""Real photos that ship inside scikit-image and scikit-learn, for the 224x224 configuration.

They carry no ImageNet labels, so the label is -1 and the benchmark scores top-1 *agreement* with
the uncompressed model. ``crops`` > 1 takes extra crops per photo (torchvision FiveCrop positions)
to get more samples from the few photos there are.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from ..errors import ConfigError, DataError
from . import register_dataset

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "motorcycle_left.png", "retina.jpg", "camera.png", "coins.png", "page.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def photo_paths() -> list[Path]:
    import skimage
    import sklearn

    sk_dir = Path(skimage.__file__).parent / "data"
    sl_dir = Path(sklearn.__file__).parent / "datasets" / "images"
    paths = [sk_dir / p for p in SKIMAGE_PHOTOS] + [sl_dir / p for p in SKLEARN_PHOTOS]
    return [p for p in paths if p.exists()]


class Photos(Dataset):
    def __init__(self, resize: int = 256, crop: int = 224, crops: int = 1) -> None:
        if crops not in (1, 5):
            raise ConfigError(f"data.crops must be 1 (centre) or 5 (FiveCrop), got {crops!r}")
        self.paths = photo_paths()
        if not self.paths:
            raise DataError("no photos found in scikit-image/scikit-learn; is the setup command done?")
        self.crops = crops
        self.resize = transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC)
        self.cut = transforms.CenterCrop(crop) if crops == 1 else transforms.FiveCrop(crop)
        self.names = [p.stem for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths) * self.crops

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        photo, crop = divmod(index, self.crops)
        with Image.open(self.paths[photo]) as im:
            img = self.resize(im.convert("RGB"))
        out = self.cut(img)
        if self.crops > 1:
            out = out[crop]
        return transforms.functional.pil_to_tensor(out), -1


@register_dataset("photos")
def photos(split: str = "test", resize: int = 256, crop: int = 224, crops: int = 1) -> Dataset:
    return Photos(resize=resize, crop=crop, crops=crops)
