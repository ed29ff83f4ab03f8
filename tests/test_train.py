"""The one training loop, per trainable family: a few steps on a few images, written into the run
directory and never into checkpoints/ unless shipped; the result loads back through the zoo by path
and round-trips real bytes."""
import hashlib
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from splitbench import ConfigError
from splitbench.codecs import create_codec
from splitbench.paths import CHECKPOINT_DIR, CONF_DIR
from splitbench.train import run_training
from splitbench.zoo import load_manifest, resolve


def shipped_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(CHECKPOINT_DIR.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def train(tmp_path, *overrides, ship=False):
    args = [*overrides, "train.max_steps=2", "train.threads=1", "data.limit=24", f"train.run_dir={tmp_path / 'run'}"]
    if ship:
        args += ["train.ship=true", f"train.ship_dir={tmp_path / 'ship'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=args)
    return run_training(cfg, "python -m splitbench.train " + " ".join(overrides))


FAMILIES = [  # (overrides, codec options that load the result, how many images round-trip)
    (["codec=frankensplit", "codec.train.batch_size=8"], {}),
    (["codec=bmshj2018", "codec.train.batch_size=4", "codec.lmbda=0.01", "codec.train.eval_limit=6"], {"lmbda": 0.01}),
    (["codec=tofc", "codec.train.batch_size=8", "codec.train.images=24", "codec.n_clusters=4", "codec.n_experts=2"],
     {"n_clusters": 4, "n_experts": 2}),
]


@pytest.mark.parametrize("overrides,options", FAMILIES, ids=["frankensplit", "bmshj2018", "tofc"])
def test_codec_trains_into_its_run_directory(tmp_path, overrides, options, task_model, test_images):
    before = shipped_digest()
    entry = train(tmp_path, *overrides)
    assert shipped_digest() == before  # checkpoints/ and its manifest untouched
    run = tmp_path / "run"
    assert json.loads((run / "manifest.json").read_text())[entry["file"][:-3]] == entry
    assert entry["steps"] == 2 and entry["kind"] == "codec" and entry["command"].startswith("python -m splitbench.train")
    assert entry["metrics"]["test_images"] > 0 and entry["metrics"]["bytes_per_image"] > 0
    name = overrides[0].split("=")[1]
    weights = resolve(name, path=run / entry["file"])
    assert weights.fingerprint == entry["sha256"]
    codec = create_codec(name, checkpoint=str(run / entry["file"]), **options)
    codec.bind(task_model)
    with torch.inference_mode():
        payloads = codec.encode(codec.device_forward(test_images[0][:2]))
        logits = codec.server_forward(codec.decode([p.data for p in payloads]))
    assert all(len(p.data) > 0 for p in payloads) and logits.shape == (2, 10)


def test_ship_writes_a_manifest_entry_with_provenance(tmp_path):
    entry = train(tmp_path, "codec=frankensplit", "codec.train.batch_size=8", "codec.lmbda=0.07", ship=True)
    shipped = load_manifest(tmp_path / "ship")["frankensplit_l0.07"]
    assert shipped["sha256"] == entry["sha256"] and (tmp_path / "ship" / shipped["file"]).exists()
    assert {"command", "data", "metrics", "family", "point", "kind", "train"} <= set(shipped)
    assert shipped["point"] == {"prior": "factorized", "split": 1, "lmbda": 0.07}
    weights = resolve("frankensplit", point=shipped["point"], directory=tmp_path / "ship")
    assert weights.fingerprint == entry["sha256"]


def test_task_model_and_patchsel_finetune(tmp_path):
    before = shipped_digest()
    entry = train(tmp_path / "vit", "model=vit_edge", "train.batch_size=8")
    assert entry["kind"] == "task_model" and entry["family"] == "vit_edge" and 0 <= entry["metrics"]["test_top1"] <= 1
    from splitbench.models import build_model

    model = build_model({"name": "vit_edge", "checkpoint": str(tmp_path / "vit" / "run" / entry["file"])})
    assert model.fingerprint == entry["sha256"]
    entry = train(tmp_path / "ps", "codec=patchsel", "codec.train.batch_size=8")
    assert entry["point"] == {"finetune": "patchdrop"} and "full_image_top1" in entry["metrics"]
    assert "offload_ratio" in entry["metrics"] or entry["metrics"]["test_images"] == 24
    assert shipped_digest() == before


def test_settings_live_in_codec_train_and_stay_out_of_the_cache_key(tmp_path):
    with pytest.raises(ConfigError, match=r"codec.train has no key\(s\) epochz; valid: codec.train.epochs"):
        train(tmp_path, "codec=frankensplit", "+codec.train.epochz=1")
    with pytest.raises(ConfigError, match="codec 'jpeg' has nothing to train; trainable codecs: .*frankensplit"):
        train(tmp_path, "codec=jpeg")
    a = create_codec("frankensplit", train={"epochs": 1})
    b = create_codec("frankensplit", train={"epochs": 9})
    assert a.options() == b.options() and "train" not in a.options()
