"""Datasets through torchvision, the offline EfficientNet-Lite0, and the task-model wrapper."""
import pytest
import torch
from PIL import Image

from splitbench import ConfigError, DataError
from splitbench.data import build_dataset


def test_fashion_mnist_is_the_real_thing():
    test = build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": None})
    train = build_dataset({"name": "fashion_mnist", "split": "train", "root": None, "limit": None})
    assert len(test) == 10_000 and len(train) == 60_000
    img, label = test[0]
    assert img.dtype == torch.uint8 and img.shape == (1, 28, 28) and label == 9  # ankle boot
    assert test.classes[9] == "Ankle boot"


def test_limit_and_bad_limit():
    ds = build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": 5})
    assert len(ds) == 5
    with pytest.raises(ConfigError, match="data.limit"):
        build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": -1})


def test_imagefolder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (300, 260), (10, 200, 30)).save(tmp_path / cls / "a.png")
    ds = build_dataset({"name": "imagefolder", "root": str(tmp_path), "split": "val", "resize": 256,
                        "crop": 224, "limit": None})
    img, label = ds[1]
    assert img.shape == (3, 224, 224) and img.dtype == torch.uint8 and label == -1  # not a model's classes


def test_imagefolder_missing_root():
    with pytest.raises(DataError, match="does not exist"):
        build_dataset({"name": "imagefolder", "root": "/no/such/dir", "limit": None})


def test_photos():
    ds = build_dataset({"name": "photos", "split": "test", "resize": 256, "crop": 224, "crops": 5, "limit": None})
    assert len(ds) >= 40
    img, label = ds[0]
    assert img.shape == (3, 224, 224) and label == -1


def test_efficientnet_lite0_offline_recognises_real_photos():
    """The positional key mapping is right only if the photos are recognised."""
    from splitbench.data.photos import Photos
    from splitbench.models import build_model

    model = build_model({"name": "tf_efficientnet_lite0", "checkpoint": None, "pretrained": True})
    ds = Photos(crops=1)
    names = ds.names
    batch = torch.stack([ds[names.index(n)][0] for n in ("coffee", "chelsea")])
    with torch.inference_mode():
        top5 = model(batch).topk(5).indices
    assert 967 in top5[0].tolist()  # espresso
    assert {281, 282, 285} & set(top5[1].tolist())  # tabby / tiger cat / Egyptian cat


def test_unknown_model_name():
    from splitbench.models import build_model

    with pytest.raises(ConfigError, match="unknown model 'vit_nosuch'"):
        build_model({"name": "vit_nosuch"})


def test_timm_without_hub_fails_in_seconds(monkeypatch):
    """Offline, model=timm with hub weights is a one-line CheckpointError at once, not ~50 s of retries."""
    import time

    from splitbench import CheckpointError
    from splitbench.models import build_model, hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.PROBE_TIMEOUT_S: False)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="model.checkpoint=PATH") as err:
        build_model({"name": "resnet18", "pretrained": True, "checkpoint": None})
    assert time.perf_counter() - start < 20 and "\n" not in str(err.value)
