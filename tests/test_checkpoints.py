"""The weights zoo: every shipped entry resolves, hash-checked; clear errors when missing or damaged."""
import shutil

import pytest
import torch

from splitbench import CheckpointError
from splitbench.paths import CHECKPOINT_DIR
from splitbench.zoo import load_manifest, read_state_dict, resolve, save_entry, sha256_file, shipped

TOY = {"kind": "codec", "family": "toy", "point": {"lmbda": 0.5}, "command": "python -m splitbench.train toy"}


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
        assert entry["kind"] in ("codec", "task_model") and entry["family"] and isinstance(entry["point"], dict)
        assert "codec.fit." not in entry["command"] and "train_steps" not in entry["command"], name


def test_every_shipped_entry_resolves_by_point_and_name():
    """The zoo finds each entry from (family, point) alone, sha256-checked, and no two share a point."""
    for name, entry in load_manifest().items():
        weights = resolve(entry["family"], point=entry["point"])
        assert weights.name == name and weights.fingerprint == entry["sha256"]
        assert weights.arch == entry.get("arch") and weights.state
        assert resolve(name=name).fingerprint == entry["sha256"]
    assert set(shipped("elic")) == {f"elic_lmbda{l}" for l in ("0.0018", "0.0067", "0.025", "0.0483")}
    assert list(shipped("tofc", n_clusters=49)) == ["tofc_s3_c49_e4_lap_l0.002"]


def test_server_vit_meets_accuracy_floor():
    assert load_manifest()["vit_fmnist"]["metrics"]["test_top1"] >= 0.89


@pytest.fixture()
def shipped_copy(tmp_path):
    state = {"w": torch.randn(8, 8), "b": torch.zeros(8)}
    save_entry("toy", state, TOY, directory=tmp_path)
    return tmp_path


def test_round_trip_fp16(shipped_copy):
    weights = resolve("toy", point={"lmbda": 0.5}, directory=shipped_copy)
    assert weights.state["w"].dtype == torch.float32 and weights.entry["size"] > 0
    assert weights.source == "shipped checkpoint 'toy'"


def test_entry_needs_uniform_keys(tmp_path):
    with pytest.raises(CheckpointError, match="needs kind"):
        save_entry("bad", {"w": torch.zeros(1)}, {"command": "x"}, directory=tmp_path)


def test_corrupt_checkpoint_fails_hash(shipped_copy):
    path = shipped_copy / "toy.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its sha256 check"):
        resolve(name="toy", directory=shipped_copy)


def test_missing_checkpoint_names_the_command(shipped_copy):
    (shipped_copy / "toy.pt").unlink()
    with pytest.raises(CheckpointError, match="missing; restore it from git or reproduce it with: python -m"):
        resolve(name="toy", directory=shipped_copy)


def test_unknown_name_and_point(shipped_copy):
    with pytest.raises(CheckpointError, match="no shipped checkpoint named 'nope'; shipped: toy"):
        resolve(name="nope", directory=shipped_copy)
    with pytest.raises(CheckpointError, match=r"no shipped toy checkpoint for lmbda=0.25; shipped: lmbda=0.5; "
                                              r"train one with: python -m splitbench.train codec=toy codec.lmbda=0.25"):
        resolve("toy", point={"lmbda": 0.25}, directory=shipped_copy, train_hint="codec.lmbda=0.25")


def test_misfit_and_arch_wording(shipped_copy):
    weights = resolve(name="toy", directory=shipped_copy)
    assert str(weights.misfit("net X", "size mismatch\nmore")) == "shipped checkpoint 'toy' does not fit net X: size mismatch"
    weights.arch = {"N": 32}
    with pytest.raises(CheckpointError, match=r"was trained with arch \{'N': 32\}, the config asks for \{'N': 64\}"):
        weights.check_arch({"N": 64}, family="toy")


def test_truncated_user_checkpoint(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(path=tmp_path / "nope.pt")


def test_corrupt_shipped_checkpoint_via_cli(tmp_path):
    """The runner reports a damaged shipped checkpoint in one line and writes nothing."""
    from conftest import run_cli

    ckpt = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINT_DIR, ckpt)
    data = bytearray((ckpt / "vit_fmnist.pt").read_bytes())
    data[-100] ^= 0xFF
    (ckpt / "vit_fmnist.pt").write_bytes(bytes(data))
    proc = run_cli(f"model.checkpoint={ckpt / 'vit_fmnist.pt'}", "data.limit=4", f"hydra.run.dir={tmp_path}/run")
    # a user path has no manifest hash, so the damage shows as an unreadable/ill-fitting file
    assert proc.returncode == 2 and "splitbench: error:" in proc.stderr
    assert not (tmp_path / "run").exists()
