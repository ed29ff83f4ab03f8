"""Real photos that ship inside scikit-image, scikit-learn and matplotlib, for 224x224 models.

Two disjoint sets, so a codec trained here is scored on photos it never saw:

* ``split=test`` (the photos suite): 12 photos, resized to ``resize`` and centre- or five-cropped.
* ``split=train``: 9 *other* photos (2 colour, 7 grey replicated to RGB), as ``train_samples``
  random resized crops with flips and colour jitter (hue, saturation, a random tint on grey
  photos), so a learned RGB codec sees colour. Crops are drawn from a generator seeded by the
  sample index: the same index gives the same crop in every run. scikit-image's
  ``motorcycle_right`` is left out: it is the stereo twin of the test set's ``motorcycle_left``.

They carry no ImageNet labels, so the label is -1 and the benchmark scores top-1 *agreement* with
the uncompressed model. These are a handful of photos, not ImageNet: figures on them show that a
codec works at real resolution, not how it ranks on ImageNet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from ..errors import ConfigError, DataError
from ..options import OneOf, Range
from . import register_dataset

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "motorcycle_left.png", "retina.jpg", "camera.png", "coins.png", "page.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# training photos: none of the above (nor motorcycle_right, the stereo twin of motorcycle_left)
SKIMAGE_TRAIN = ("ihc.png", "brick.png", "grass.png", "gravel.png", "moon.png", "cell.png", "clock_motion.png",
                 "text.png")
MATPLOTLIB_TRAIN = ("grace_hopper.jpg",)
SPLITS = ("test", "train")


def photo_paths(split: str = "test") -> list[Path]:
    """The photos of ``split`` that exist in the installed packages."""
    import matplotlib
    import skimage
    import sklearn

    sk_dir = Path(skimage.__file__).parent / "data"
    if split == "train":
        mpl_dir = Path(matplotlib.get_data_path()) / "sample_data"
        paths = [sk_dir / p for p in SKIMAGE_TRAIN] + [mpl_dir / p for p in MATPLOTLIB_TRAIN]
    else:
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


class TrainingPhotos(Dataset):
    """``samples`` augmented crops of the training photos, each fixed by its index (see the module)."""

    def __init__(self, crop: int = 224, samples: int = 2048, scale: tuple[float, float] = (0.1, 1.0)) -> None:
        self.paths = photo_paths("train")
        if not self.paths:
            raise DataError("no training photos found in scikit-image/matplotlib; is the setup command done?")
        self.images = []
        for path in self.paths:
            with Image.open(path) as im:
                self.images.append((im.mode in ("L", "I", "I;16", "1"), im.convert("RGB")))
        self.samples, self.crop = samples, crop
        self.cut = transforms.RandomResizedCrop(crop, scale=scale, interpolation=transforms.InterpolationMode.BICUBIC,
                                                antialias=True)
        self.jitter = transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.4, hue=0.15)
        self.names = [p.stem for p in self.paths]

    def __len__(self) -> int:
        return self.samples

    def describe(self) -> str:
        """For manifest entries: what a codec trained here saw."""
        return (f"{self.samples} random {self.crop}px crops (flip, colour jitter, tinted grey) of "
                f"{len(self.paths)} package photos: {', '.join(self.names)}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        grey, img = self.images[index % len(self.images)]
        with torch.random.fork_rng(devices=[]):  # the crop depends on the index alone
            torch.manual_seed(index)
            out = transforms.functional.pil_to_tensor(self.jitter(self.cut(img)))
            if torch.rand(()) < 0.5:
                out = out.flip(-1)
            if grey:  # a random tint, so grey photos also teach colour
                tint = 0.6 + 0.4 * torch.rand(3, 1, 1)
                out = (out.float() * tint / tint.max()).round().to(torch.uint8)
        return out, -1


@register_dataset("photos")
def photos(split: Annotated[str, OneOf(*SPLITS)] = "test", resize: Annotated[int, Range(1, 4096)] = 256,
           crop: Annotated[int, Range(8, 4096)] = 224, crops: int = 1,
           train_samples: Annotated[int, Range(1)] = 2048, train_crop: Annotated[int, Range(8, 4096)] | None = None
           ) -> Dataset:
    """``split=test``: the photos suite; ``split=train``: ``train_samples`` crops of other photos at
    ``train_crop`` pixels a side (null: ``crop``; a smaller crop trains a convolutional codec faster)."""
    if split == "train":
        return TrainingPhotos(crop=train_crop or crop, samples=train_samples)
    return Photos(resize=resize, crop=crop, crops=crops)
