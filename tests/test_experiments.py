"""Paper recipes (conf/experiment/, issue #13) as written, offline, at their real sizes.

Each recipe runs as its header says (``python -m splitbench.train +experiment=X ...`` then
``python -m splitbench +experiment=X ...``, both in this process through their command-line entry
points), with only what a user must provide swapped in: random-weight state dicts of the real
timm architectures (swin_s3_base_224, deit_base/small/tiny_patch16_224) instead of hub weights, and a
two-image ImageNet-style tree (synset class folders, train/ and val/, 224x224 RGB after the models'
preprocessing) instead of ImageNet. Learned codecs train one step (ELIC on 64x64 patches: a 224 step of
the official-size ELIC costs ~6 s here) and the recipe then runs from the trained file, giving a
results row of real range-coded bytes. ``test_*`` below also check that the composed configuration
sets nothing beyond those keys, and that the trained file is the one the header names.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from backbones import compose_cfg, make_world
from omegaconf import OmegaConf

from splitbench.paths import CONF_DIR

pytestmark = pytest.mark.slow

SERVER = {"frankensplit_imagenet": "swin_s3_base_224", "patchsel_deit": "deit_base_patch16_224",
          "tofc_vit": "deit_small_patch16_224", "elic_official": "deit_small_patch16_224"}
EDGE = "deit_tiny_patch16_224"
SYNSETS = ("n01440764", "n01443537")  # ImageNet classes (tench, goldfish): the rows report accuracy
# what a test may set beyond the recipe: where data and weights are, step counts, limits, output places
ALLOWED = {"data.root", "model.checkpoint", "codec.checkpoint", "codec.edge_checkpoint", "train.max_steps",
           "train.run_dir", "codec.train.crop", "codec.train.eval_limit"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Random-weight state dicts of every recipe's models (fp16) and train/ + val/ with 2 photos each.

    One torch thread for the module (training included; runs set measure.threads=1 anyway): on a
    shared 2-core host two threads made building these models 3-5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_world(tmp_path_factory.mktemp("recipes"), (*sorted(set(SERVER.values())), EDGE), images=2,
                     classes=SYNSETS, half=True)
    torch.set_num_threads(threads)


def header(recipe: str) -> str:
    return (CONF_DIR / "experiment" / f"{recipe}.yaml").read_text()


def user_args(world: Path, recipe: str) -> list[str]:
    """The recipe plus what its header says a user provides: the ImageNet root and the weights."""
    args = [f"+experiment={recipe}", f"data.root={world}", f"model.checkpoint={world / (SERVER[recipe] + '.pt')}"]
    return args + ([f"codec.edge_checkpoint={world / (EDGE + '.pt')}"] if recipe == "patchsel_deit" else [])


def assert_as_written(args: list[str]) -> None:
    """Beyond the recipe, the test sets only ALLOWED keys (and where Hydra writes its run directory)."""
    keys = {a.split("=", 1)[0] for a in args if not a.startswith(("+experiment=", "hydra."))}
    assert keys <= ALLOWED, keys - ALLOWED


def train(cli, tmp_path: Path, world: Path, recipe: str, *limits: str) -> tuple[Path, dict]:
    """``python -m splitbench.train +experiment=<recipe> ...`` for one step into tmp_path/train."""
    from splitbench.train.__main__ import cli as train_cli

    run_dir = tmp_path / "train"
    args = [*user_args(world, recipe), "train.max_steps=1", *limits, f"train.run_dir={run_dir}",
            f"hydra.run.dir={run_dir}"]
    assert_as_written(args)
    code, out, err = cli(*args, main=train_cli)
    assert code == 0, err[-3000:]
    [(name, entry)] = json.loads((run_dir / "manifest.json").read_text()).items()
    # the file the header's run command names (train.run_dir=results/recipes/<recipe> there)
    named = re.search(rf"train\.run_dir=results/recipes/{recipe}\b.*?codec\.checkpoint=results/recipes/{recipe}/"
                      rf"(\S+\.pt)", header(recipe), re.S)
    assert named and entry["file"] == named.group(1)
    evaluated = 1 if "codec.train.eval_limit=1" in limits else 2  # the val images the manifest metrics saw
    assert entry["steps"] == 1 and entry["metrics"]["test_images"] == evaluated
    return run_dir / entry["file"], entry


def run(cli, tmp_path: Path, world: Path, recipe: str, *extra: str) -> pd.Series:
    """``python -m splitbench +experiment=<recipe> ...``: its results row."""
    args = [*user_args(world, recipe), *extra, f"hydra.run.dir={tmp_path / 'run'}"]
    assert_as_written(args)
    code, out, err = cli(*args)
    assert code == 0, err[-3000:]
    assert "| raw" in out  # the recipe keeps the raw reference row
    [row] = pd.read_csv(tmp_path / "run" / "results.csv").to_dict("records")
    assert row["model"] == SERVER[recipe] and row["n"] == 2 and row["data"] == "imagefolder"
    assert 0 <= row["accuracy"] <= 1  # synset folders: labelled, so a number (random weights: any value)
    return pd.Series(row)


def test_every_recipe_is_tested():
    assert {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")} == set(SERVER)
    for recipe in SERVER:
        text = header(recipe)
        assert text.startswith("# @package _global_\n") and f"python -m splitbench +experiment={recipe}" in text


def test_frankensplit_on_swin(world, tmp_path, cli):
    checkpoint, entry = train(cli, tmp_path, world, "frankensplit_imagenet")
    arch = entry["arch"]
    assert arch["backbone"] == "SwinTransformer" and arch["split"] == "layers.1"
    assert arch["feature"] == [192, 28, 28] and arch["channels"] == [48, 64, 48] and arch["latent"] == 48
    assert 0.13e6 < entry["device_encoder"]["params"] < 0.15e6  # the paper's ~0.14M-parameter encoder
    row = run(cli, tmp_path, world, "frankensplit_imagenet", f"codec.checkpoint={checkpoint}")
    assert row.codec == "frankensplit" and json.loads(row.codec_options)["split"] == "layers.1"
    # a 48x28x28 latent through compressai's rANS: real bytes, a little above the entropy model's estimate
    assert row.est_bits_per_image / 8 <= row.bytes_per_image <= row.est_bits_per_image / 8 * 1.02 + 64
    assert row.bytes_per_image == pytest.approx(entry["metrics"]["bytes_per_image"], rel=0.002)


def test_patch_selection_with_deit_tiny_and_deit_base(world, tmp_path, cli):
    row = run(cli, tmp_path, world, "patchsel_deit")
    options = json.loads(row.codec_options)
    assert (options["edge_model"], options["eta"], options["delta"]) == (f"timm:{EDGE}", 0.8, 0.97)
    # random weights: a flat softmax (min-entropy ~10 bits > eta) offloads both images
    assert row.offload_ratio == 1 and row.gate_uncertainty > 0.8
    assert 0 < row.kept_patches <= 196 and row.token_cost == pytest.approx(row.kept_patches / 196)
    raw = row.kept_patches * 16 * 16 * 3  # the kept patches' pixels, deflated, plus count and subset rank
    assert raw / 10 < row.bytes_per_image < raw + 64


def test_patch_selection_without_hub_weights_says_what_to_pass(world, tmp_path, cli, monkeypatch):
    from splitbench.models import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.PROBE_TIMEOUT_S: False)
    code, _, err = cli("+experiment=patchsel_deit", f"data.root={world}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and err.strip().splitlines() == [
        f"splitbench: error: edge timm model '{EDGE}' needs pretrained weights: the model hub is unreachable and "
        "they are not in the local cache; pass codec.edge_checkpoint=PATH (a state dict)"]


def test_tofc_on_deit_small(world, tmp_path, cli):
    checkpoint, entry = train(cli, tmp_path, world, "tofc_vit")
    arch = entry["arch"]
    assert (arch["dim"], arch["split"], arch["n_clusters"], arch["n_experts"]) == (384, 6, 8, 16)
    assert (arch["hyper_channels"], arch["transform"], arch["distribution"]) == (24, "none", "laplace")
    row = run(cli, tmp_path, world, "tofc_vit", f"codec.checkpoint={checkpoint}")
    assert row.codec == "tofc" and row.tokens == 9  # the class token + 8 merged tokens cross the link
    assert row.bytes_per_image > 9 and row.est_bits_per_image > 0
    assert row.bytes_per_image == pytest.approx(entry["metrics"]["bytes_per_image"], rel=0.002)


def test_elic_at_the_official_size(world, tmp_path, cli):
    from compressai.models import Elic2022Official

    from splitbench import create_codec
    from splitbench.zoo import resolve

    checkpoint, entry = train(cli, tmp_path, world, "elic_official", "codec.train.crop=64", "codec.train.eval_limit=1")
    assert entry["arch"] == {"N": 192, "M": 320, "variant": "official", "stages": 4, "channels": 3,
                             "context": [224, 128]}
    # compressai's official module layout: every parameter of Elic2022Official(192, 320), same shapes, nothing else
    torch.manual_seed(0)
    net = Elic2022Official(N=192, M=320)
    trained = {k: v.shape for k, v in resolve(path=checkpoint).state.items()}
    assert {k: trained.get(k) for k, _ in net.named_parameters()} == {k: p.shape for k, p in net.named_parameters()}
    assert set(trained) <= set(net.state_dict())
    row = run(cli, tmp_path, world, "elic_official", f"codec.checkpoint={checkpoint}")
    assert row.codec == "elic" and row.rate_point == "ckpt N192/M320" and row.psnr > 0
    # one rANS stream per image (an untrained model's escapes cost fewer bits than its likelihood bound says)
    assert 1000 < row.bytes_per_image and row.est_bits_per_image > 0
    assert entry["metrics"]["per_image_path_same_bytes"] == "1/1"  # training's batched bytes = the codec's
    # an official-layout state dict (what compressai's Elic2022Official saves) loads by path as the recipe says
    torch.save(net.state_dict(), tmp_path / "official.pt")
    codec_cfg = compose_cfg("config", ["+experiment=elic_official"]).codec
    options = {k: v for k, v in OmegaConf.to_container(codec_cfg).items() if k not in ("name", "checkpoint")}
    codec = create_codec("elic", **options, checkpoint=str(tmp_path / "official.pt"))
    assert codec.net.arch["N"] == 192 and codec.net.arch["M"] == 320 and codec.net.arch["stages"] == 4


@pytest.mark.parametrize("args,line", [
    (["+experiment=patchsel_deti"], "unknown experiment 'patchsel_deti' (did you mean 'patchsel_deit'?); valid "
                                    "experiments: elic_official, frankensplit_imagenet, patchsel_deit, tofc_vit"),
    (["experiment=tofc_vit"], "experiment=tofc_vit: a recipe adds to the defaults, write +experiment=tofc_vit; "
                              "valid experiments: elic_official, frankensplit_imagenet, patchsel_deit, tofc_vit"),
    (["+experiment=tofc_vit", "codec.n_cluster=4"], "codec 'tofc' has no option 'codec.n_cluster' (did you mean "
                                                    "'codec.n_clusters'?)"),
])
def test_experiment_mistakes_are_one_line(cli, tmp_path, args, line):
    code, _, err = cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and line in err, err
    assert not (tmp_path / "run").exists()
