"""The real-resolution demonstration: photo-trained points for EfficientNet-Lite0, chosen per model.

Covers the photos' train/test separation, the zoo's per-model point choice, and that the shipped
EfficientNet-Lite0 FrankenSplit and RGB bmshj2018 points run from the CLI on unseen photos.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from splitbench.data.photos import photo_paths, photos
from splitbench.errors import CheckpointError
from splitbench.zoo import find_point, load_manifest, model_points_hint, resolve, save_entry

LITE0 = "tf_efficientnet_lite0"


def test_training_photos_are_disjoint_from_the_test_photos():
    train, test = photo_paths("train"), photo_paths("test")
    assert len(train) >= 8 and len(test) >= 12
    assert not {p.name for p in train} & {p.name for p in test}
    assert "motorcycle_right.png" not in {p.name for p in train}  # stereo twin of a test photo


def test_training_crops_are_fixed_by_their_index_and_described():
    ds = photos(split="train", train_samples=16, train_crop=64)
    first = ds[3][0]
    assert first.shape == (3, 64, 64) and first.dtype == torch.uint8 and ds[3][1] == -1
    assert torch.equal(first, ds[3][0]) and not torch.equal(first, ds[4][0])
    assert len(ds) == 16 and "grace_hopper" in ds.describe()


def _entry(point):
    return {"family": "demo", "kind": "codec", "point": point}


def test_a_models_own_point_is_chosen_before_the_generic_one():
    manifest = {"grey": _entry({"lmbda": 0.1}), "rgb": _entry({"lmbda": 0.1, "model": LITE0}),
                "other": _entry({"lmbda": 0.1, "model": "resnet18"})}
    assert find_point(manifest, "demo", {"lmbda": 0.1}, LITE0) == ["rgb", "grey"]
    assert find_point(manifest, "demo", {"lmbda": 0.1}, "vit_fmnist") == ["grey"]
    assert find_point(manifest, "demo", {"lmbda": 0.1}, None) == ["grey"]
    assert find_point({"rgb": manifest["rgb"]}, "demo", {"lmbda": 0.1}, None) == ["rgb"]  # the only one
    assert find_point({"rgb": manifest["rgb"]}, "demo", {"lmbda": 0.1}, "resnet18") == []


def test_a_missing_point_lists_the_models_own_points(tmp_path):
    save_entry("demo_a", {"w": torch.zeros(1)}, _entry({"lmbda": 4.0, "model": LITE0}), tmp_path)
    save_entry("demo_b", {"w": torch.zeros(1)}, _entry({"lmbda": 16.0, "model": LITE0}), tmp_path)
    with pytest.raises(CheckpointError, match=r"for model tf_efficientnet_lite0.*lmbda=16; lmbda=4"):
        resolve("demo", point={"lmbda": 1.0}, model=LITE0, directory=tmp_path)
    assert resolve("demo", point={"lmbda": 16.0}, model=LITE0, directory=tmp_path).name == "demo_b"
    assert model_points_hint("demo", LITE0, tmp_path) == "; shipped for tf_efficientnet_lite0: codec.lmbda=4,16"


def _shipped(family):
    return {n: e for n, e in load_manifest().items()
            if e.get("family") == family and e.get("point", {}).get("model") == LITE0}


@pytest.mark.parametrize("family", ["frankensplit", "bmshj2018"])
def test_shipped_photo_points_have_provenance(family):
    points = _shipped(family)
    assert len(points) >= 3, f"expected at least 3 shipped {family} points for {LITE0}"
    for name, e in points.items():
        assert e["data"].startswith("photos train split") and "grace_hopper" in e["data"], name
        assert "data=photos" in e["command"] and "model=efficientnet_lite0" in e["command"], name
        m = e["metrics"]
        assert m["test_images"] == 60 and 0 <= m["agreement"] <= 1 and m["bytes_per_image"] > 0, name
    sizes = sorted(e["metrics"]["bytes_per_image"] for e in points.values())
    assert sizes[0] < sizes[-1]  # the points are different rates


@pytest.mark.slow
@pytest.mark.parametrize("family,extra", [("frankensplit", ["codec.split=blocks.2"]), ("bmshj2018", [])])
def test_photo_points_run_on_unseen_photos(cli, tmp_path, family, extra):
    lmbda = sorted(e["point"]["lmbda"] for e in _shipped(family).values())[0]
    code, _, stderr = cli("data=photos", "model=efficientnet_lite0", f"codec={family}", f"codec.lmbda={lmbda}",
                          *extra, "data.limit=2", "data.crops=1", "measure.progress=false", "measure.cache=false",
                          f"hydra.run.dir={tmp_path}/run")
    assert code == 0, stderr
    row = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    assert row.model == LITE0 and row.n == 2 and row.bytes_per_image > 0 and 0 <= row.agreement <= 1


def test_grey_suite_weights_on_lite0_name_the_models_own_points(cli, tmp_path):
    code, _, stderr = cli("data=photos", "model=efficientnet_lite0", "codec=frankensplit", "data.limit=1",
                          "measure.progress=false", f"hydra.run.dir={tmp_path}/run")
    assert code != 0 and len(stderr.strip().splitlines()) == 1
    assert "shipped for tf_efficientnet_lite0: " in stderr and "codec.split=blocks.2" in stderr
    assert "codec.lmbda=1,4,16" in stderr
    assert not (tmp_path / "run" / "results.csv").exists()


def test_manifest_stays_valid_json():
    json.loads((__import__("splitbench.paths", fromlist=["x"]).CHECKPOINT_DIR / "manifest.json").read_text())
