"""Shipped checkpoints: hash-checked, weights-only, clear errors when missing or damaged."""
import json
import shutil

import pytest
import torch

from splitbench import CheckpointError
from splitbench.models.checkpoints import load_manifest, load_shipped, save_shipped, sha256_file
from splitbench.paths import CHECKPOINT_DIR


def test_manifest_entries_match_files():
    manifest = load_manifest()
    assert "vit_fmnist" in manifest
    for name, entry in manifest.items():
        path = CHECKPOINT_DIR / entry["file"]
        assert path.exists(), name
        assert sha256_file(path) == entry["sha256"], name
        assert path.stat().st_size == entry["size"], name
        assert entry["command"].startswith("python -m splitbench.train"), name
        assert "metrics" in entry and "data" in entry, name


def test_server_vit_meets_accuracy_floor():
    assert load_manifest()["vit_fmnist"]["metrics"]["test_top1"] >= 0.89


@pytest.fixture()
def shipped_copy(tmp_path):
    state = {"w": torch.randn(8, 8), "b": torch.zeros(8)}
    save_shipped("toy", state, {"command": "python -m splitbench.train toy"}, directory=tmp_path)
    return tmp_path


def test_round_trip_fp16(shipped_copy):
    state, entry = load_shipped("toy", directory=shipped_copy)
    assert state["w"].dtype == torch.float32 and entry["size"] > 0


def test_corrupt_checkpoint_fails_hash(shipped_copy):
    path = shipped_copy / "toy.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its sha256 check"):
        load_shipped("toy", directory=shipped_copy)


def test_missing_checkpoint_names_the_command(shipped_copy):
    (shipped_copy / "toy.pt").unlink()
    with pytest.raises(CheckpointError, match="missing; restore it from git or reproduce it with: python -m"):
        load_shipped("toy", directory=shipped_copy)


def test_unknown_name(shipped_copy):
    with pytest.raises(CheckpointError, match="no shipped checkpoint named 'nope'; shipped: toy"):
        load_shipped("nope", directory=shipped_copy)


def test_truncated_user_checkpoint(tmp_path):
    from splitbench.models.checkpoints import load_user_checkpoint

    path = tmp_path / "bad.pt"
    torch.save({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_user_checkpoint(path)


def test_corrupt_shipped_checkpoint_via_cli(tmp_path):
    """The runner reports a damaged shipped checkpoint in one line and writes nothing."""
    from conftest import REPO, run_cli

    ckpt = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINT_DIR, ckpt)
    data = bytearray((ckpt / "vit_fmnist.pt").read_bytes())
    data[-100] ^= 0xFF
    (ckpt / "vit_fmnist.pt").write_bytes(bytes(data))
    proc = run_cli(f"model.checkpoint={ckpt / 'vit_fmnist.pt'}", "data.limit=4", f"hydra.run.dir={tmp_path}/run")
    # a user path has no manifest hash, so the damage shows as an unreadable/ill-fitting file
    assert proc.returncode == 2 and "splitbench: error:" in proc.stderr
    assert not (tmp_path / "run").exists()
