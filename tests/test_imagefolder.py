"""Image folders a user can trust: splits apart, labels in the model's class ids, grey stays grey,
damaged files named, the cache following the folder's contents, the shape checked first."""
from __future__ import annotations

import math
import os

import pytest
import torch
from PIL import Image

from splitbench import DataError
from splitbench.data import build_dataset, check_fits, dataset_identity
from splitbench.data.imagefolder import folder_labels
from splitbench.models.vit import FMNIST_CLASSES


def _compose(*overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from splitbench.paths import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["measure.progress=false", "measure.threads=1", *overrides])


def _folder_cfg(root, **extra):
    return {"name": "imagefolder", "root": str(root), "split": "val", "train_root": None, "resize": None,
            "crop": None, "channels": None, "interpolation": None, "on_corrupt": "error", "limit": None, **extra}


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory):
    """40 real Fashion-MNIST test images as grey PNGs in class-name folders ("T-shirt/top" -> T-shirt_top)."""
    root = tmp_path_factory.mktemp("fmnist_folder")
    ds = build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": 40})
    for i in range(len(ds)):
        image, label = ds[i]
        folder = root / FMNIST_CLASSES[label].replace("/", "_")
        folder.mkdir(exist_ok=True)
        Image.fromarray(image[0].numpy(), "L").save(folder / f"{i}.png")
    return root


def test_folder_labels_rules():
    synsets = ["n01440764", "n01443537"]
    imagenet = [f"n{i:08d}" for i in range(998)] + synsets
    assert folder_labels(synsets, imagenet, 1000) == ([998, 999], "ImageNet synsets")
    assert folder_labels(["Ankle_boot", "t-shirt top"], list(FMNIST_CLASSES), 10) == ([9, 0], "class names")
    assert folder_labels(["0", "7"], None, 10) == ([0, 7], "class indices")
    assert folder_labels(["cats", "dogs"], list(FMNIST_CLASSES), 10) == ([-1, -1], "none")
    assert folder_labels(["3", "12"], None, 10) == ([-1, -1], "none")


def test_grey_folder_with_grey_model_scores_accuracy_and_jpeg_beats_raw(grey_folder, tmp_path):
    from splitbench.run import execute

    rows = execute(_compose("codec=jpeg", "codec.abbreviated=true", "data=imagefolder",
                            f"data.root={grey_folder}"), tmp_path / "run")
    jpeg, raw = rows
    assert raw["bytes_per_image"] == 784  # grey stays grey: 28x28x1
    assert jpeg["bytes_per_image"] < raw["bytes_per_image"]
    assert not math.isnan(raw["accuracy"]) and raw["accuracy"] > 0.6  # the real labels, mapped
    assert raw["n"] == 40


def test_synset_folders_score_imagenet_accuracy(tmp_path):
    """Real photos in synset folders with the ImageNet EfficientNet-Lite0: accuracy is computed."""
    from splitbench.data.photos import photo_paths
    from splitbench.models import build_model

    photos = {p.stem: p for p in photo_paths()}
    for synset, stem in (("n07920052", "coffee"), ("n02123159", "chelsea")):  # espresso, tiger cat
        (tmp_path / synset).mkdir()
        Image.open(photos[stem]).convert("RGB").save(tmp_path / synset / f"{stem}.jpg")
    model = build_model({"name": "tf_efficientnet_lite0"})
    ds = build_dataset(_folder_cfg(tmp_path), model=model)
    check_fits(ds, "imagefolder", model)
    assert ds.label_source == "ImageNet synsets" and sorted(ds[i][1] for i in range(2)) == [282, 967]
    with torch.inference_mode():
        preds = [int(model(ds[i][0][None]).argmax()) for i in range(2)]
    assert all(p >= 0 for p in preds)


def test_unrecognised_folders_report_accuracy_as_na(tmp_path):
    from splitbench.run import execute

    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for k in range(2):
            Image.new("L", (28, 28), 40 * k + 60).save(tmp_path / "imgs" / cls / f"{k}.png")
    rows = execute(_compose("codec=png", "data=imagefolder", f"data.root={tmp_path / 'imgs'}"), tmp_path / "run")
    assert math.isnan(rows[0]["accuracy"]) and rows[0]["agreement"] == 1.0


def test_splits_stay_apart(tmp_path):
    for split in ("train", "val"):
        for cls in ("0", "1"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("L", (28, 28)).save(tmp_path / split / cls / f"{split}.png")
    (tmp_path / "train" / "1" / "extra.png").write_bytes((tmp_path / "train" / "1" / "train.png").read_bytes())
    val = build_dataset(_folder_cfg(tmp_path))
    train = build_dataset(_folder_cfg(tmp_path), split="train")
    assert len(val) == 2 and len(train) == 3
    assert all("/val/" in p for p, _ in val.samples) and all("/train/" in p for p, _ in train.samples)
    with pytest.raises(DataError, match="train_root"):
        build_dataset(_folder_cfg(tmp_path / "val"), split="train")  # never trains on the evaluation images


def test_corrupt_image_is_named_or_skipped(grey_folder, tmp_path):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(grey_folder, root)
    victim = next(root.glob("Trouser/*.png"))
    victim.write_bytes(victim.read_bytes()[:60])  # truncated
    ds = build_dataset(_folder_cfg(root))
    index = next(i for i, (p, _) in enumerate(ds.samples) if p == str(victim))
    with pytest.raises(DataError, match=f"cannot read image {victim}") as err:
        ds[index]
    assert "\n" not in str(err.value)
    skipping = build_dataset(_folder_cfg(root, on_corrupt="skip"))
    assert len(skipping) == len(ds) - 1 and skipping.skipped[0][0] == str(victim)


def test_corrupt_image_in_a_run_is_one_line_and_leaves_no_run_dir(grey_folder, tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    root = tmp_path / "damaged"
    shutil.copytree(grey_folder, root)
    victim = sorted(root.glob("*/*.png"))[5]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "splitbench", "codec=png", "data=imagefolder",
                           f"data.root={root}", "measure.progress=false", f"hydra.run.dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("splitbench: error: cannot read image") and str(victim) in last
    assert not run_dir.exists()


def test_cache_key_follows_folder_contents(grey_folder, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(grey_folder, root)
    before = dataset_identity(build_dataset(_folder_cfg(root)))
    victim = next(root.glob("Bag/*.png"))
    Image.new("L", (28, 28), 255).save(victim)
    os.utime(victim, ns=(1, 1))
    after = dataset_identity(build_dataset(_folder_cfg(root)))
    assert before["contents"] != after["contents"]


def test_shape_is_checked_against_the_model_first(tmp_path):
    from splitbench.run import execute

    with pytest.raises(DataError, match=r"gives 1x28x28 images .* model 'tf_efficientnet_lite0' takes 3x224x224"):
        execute(_compose("codec=jpeg", "model=efficientnet_lite0", "data.limit=2"), tmp_path / "run")


def test_image_folder_sharded_like_one_process(grey_folder, tmp_path):
    """Workers build the folder with the same model-driven preprocessing and cache key as the parent."""
    from splitbench.run import execute

    one = execute(_compose("codec=png", "data=imagefolder", f"data.root={grey_folder}", "measure.workers=1",
                           "measure.cache=false"), tmp_path / "one")
    two = execute(_compose("codec=png", "data=imagefolder", f"data.root={grey_folder}", "measure.workers=2",
                           "measure.cache=false"), tmp_path / "two")
    assert one[0]["timing_workers"] == 1 and two[0]["timing_workers"] == 2
    for a, b in zip(one, two):
        assert (a["accuracy"], a["bytes_per_image"], a["n"]) == (b["accuracy"], b["bytes_per_image"], b["n"])
