"""A user's own images in torchvision's ImageFolder layout (e.g. an ImageNet val tree).

What the benchmark can trust about a folder:

- **Splits stay apart.** ``split=train`` reads ``data.train_root`` or ``<root>/train``; evaluation
  reads ``<root>/<split>`` when it exists, else ``root`` itself. Training never falls back to the
  evaluation images.
- **Labels mean the model's classes.** Folder names are matched to the task model's class names:
  ImageNet synsets (``n01440764``) for ImageNet-1k models, the model's own class names (compared
  case- and punctuation-insensitively), or class indices (``0``, ``1``, ...). A folder tree that
  matches none of these is unlabelled (label -1): it is scored by agreement with the uncompressed
  model and its accuracy is n/a, never a silent 0.
- **Pixels as the model expects them.** Channels follow the model's input (a grey model gets grey
  images, so a grey folder is not inflated to RGB); resize, crop and interpolation follow the
  weights' preprocessing (timm's ``crop_pct``: resize ``crop / crop_pct``, centre-crop ``crop``) unless set.
  The crop is what the device sees and codes (the split-computing convention).
- **A damaged file is named.** An unreadable image raises a one-line DataError with its path; with
  ``on_corrupt=skip`` every file is decoded once up front and the unreadable ones are left out and counted.
- **The cache sees changes.** ``fingerprint`` hashes every file's path, size and modification time,
  so the record cache key changes when the folder does.
"""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from ..errors import ConfigError, DataError
from . import register_dataset

if TYPE_CHECKING:  # pragma: no cover
    from ..models import TaskModel

SYNSET = re.compile(r"^n\d{8}$")
INTERPOLATIONS = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR,
                  "nearest": transforms.InterpolationMode.NEAREST}
ON_CORRUPT = ("error", "skip")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def folder_labels(folders: list[str], class_names: list[str] | None, num_classes: int) -> tuple[list[int], str]:
    """Model class index per folder (all -1 when the folders are not the model's classes), and how."""
    if class_names:
        exact = {name: i for i, name in enumerate(class_names)}
        if all(SYNSET.match(f) for f in folders) and all(f in exact for f in folders):
            return [exact[f] for f in folders], "ImageNet synsets"
        loose = {_norm(name): i for i, name in enumerate(class_names)}
        if all(_norm(f) in loose for f in folders):
            return [loose[_norm(f)] for f in folders], "class names"
    if all(f.isdigit() and int(f) < num_classes for f in folders):
        return [int(f) for f in folders], "class indices"
    return [-1] * len(folders), "none"


def split_root(root: str | None, train_root: str | None, split: str) -> Path:
    """The folder holding ``split``'s class subfolders (see the module doc)."""
    if root is None:
        raise DataError("data=imagefolder needs data.root=DIR (a folder of class subfolders of images)")
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data.root {root!r} does not exist; give a folder of class subfolders of images")
    if split == "train":
        if train_root is not None:
            if not Path(train_root).is_dir():
                raise DataError(f"data.train_root {train_root!r} does not exist")
            return Path(train_root)
        if (base / "train").is_dir():
            return base / "train"
        raise DataError(f"data.split=train needs training images apart from the evaluation images: set "
                        f"data.train_root=DIR, or use a data.root with train/ and val/ inside ({root!r} has no train/)")
    if (base / split).is_dir():
        return base / split
    if (base / "train").is_dir():
        raise DataError(f"data.root {root!r} has train/ but no {split}/: give the evaluation split's folder "
                        f"(data.split=<its name>) so evaluation never reads training images")
    return base


def fingerprint(paths: list[str], root: Path) -> str:
    """Hash of every file's relative path, size and modification time."""
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class FolderImages(Dataset):
    """uint8 (C,H,W) crops and model class indices of an ImageFolder tree."""

    def __init__(self, root: Path, mode: str, resize: int, crop: tuple[int, int], interpolation: str,
                 class_names: list[str] | None, num_classes: int, on_corrupt: str) -> None:
        try:
            tree = ImageFolder(str(root), loader=lambda p: p, allow_empty=False)  # paths only; we load
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"{str(root)!r} is not an ImageFolder tree of images: {err}") from None
        self.root, self.mode, self.classes = root, mode, tree.classes
        labels, self.label_source = folder_labels(tree.classes, class_names, num_classes)
        self.samples = [(path, labels[target]) for path, target in tree.samples]
        self.fingerprint = fingerprint([p for p, _ in self.samples], root)
        self.resize = transforms.Resize(resize, interpolation=INTERPOLATIONS[interpolation])
        self.crop = transforms.CenterCrop(crop)
        self.skipped: list[tuple[str, str]] = []
        if on_corrupt == "skip":
            self._drop_unreadable()

    def _drop_unreadable(self) -> None:
        keep = []
        for path, label in tqdm(self.samples, desc="checking images", unit="img", leave=False,
                                disable=len(self.samples) < 500):
            try:
                self._open(path)
                keep.append((path, label))
            except DataError as err:
                self.skipped.append((path, str(err)))
        self.samples = keep
        if self.skipped:
            print(f"splitbench: skipped {len(self.skipped)} unreadable image(s) in {self.root} "
                  f"(data.on_corrupt=skip); first: {self.skipped[0][1]}", file=sys.stderr)
        if not self.samples:
            raise DataError(f"no readable images in {self.root}")

    def _open(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert(self.mode)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"cannot read image {path}: {reason} (data.on_corrupt=skip leaves such files "
                            f"out)") from None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return transforms.functional.pil_to_tensor(self.crop(self.resize(self._open(path)))), label


@register_dataset("imagefolder")
def imagefolder(root: str | None = None, split: str = "val", train_root: str | None = None,
                resize: int | None = None, crop: int | None = None, channels: int | None = None,
                interpolation: str | None = None, on_corrupt: str = "error",
                model: "TaskModel | None" = None) -> Dataset:
    """Preprocessing defaults come from ``model`` (the task model) when the runner passes it."""
    if on_corrupt not in ON_CORRUPT:
        raise ConfigError(f"data.on_corrupt must be one of {', '.join(ON_CORRUPT)}, got {on_corrupt!r}")
    folder = split_root(root, train_root, split)
    c, h, w = model.input_size if model is not None else (3, 224, 224)
    channels = channels if channels is not None else c
    if channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    crop_hw = (crop, crop) if crop is not None else (h, w)
    crop_pct = model.crop_pct if model is not None else 0.875
    resize = resize if resize is not None else int(min(crop_hw) / crop_pct)
    interpolation = interpolation or (model.interpolation if model is not None else "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"data.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    names = model.class_names if model is not None else None
    classes = model.num_classes if model is not None else 0
    return FolderImages(folder, "L" if channels == 1 else "RGB", resize, crop_hw, interpolation, names, classes,
                        on_corrupt)


def describe(dataset: Any) -> dict[str, Any]:
    """What the record cache key needs beyond the config (folder contents)."""
    return {"contents": dataset.fingerprint} if isinstance(dataset, FolderImages) else {}
