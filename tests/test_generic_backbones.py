"""Learned codecs on timm backbones other than the shipped grey ViT (issue #13).

Random-weight resnet18 and vit_tiny_patch16_224 saved as state dicts, a tiny 224x224 RGB image
folder made from real photos: each codec the method allows trains 2 steps with the framework's
loop, then runs from the trained file through the benchmark and reports real bytes; where the
method does not allow the backbone, binding fails with one line saying what it needs.
"""
from __future__ import annotations

import pytest
import torch
from backbones import compose_cfg, make_world, model_overrides, task

from splitbench import CheckpointError, ConfigError, create_codec
from splitbench.train import run_training

BACKBONES = ("resnet18", "vit_tiny_patch16_224")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Random-weight checkpoints of both backbones and train/ + val/ folders of 4 RGB photos each."""
    return make_world(tmp_path_factory.mktemp("generic"), BACKBONES)


def train(world, tmp_path, backbone, *overrides):
    args = [*overrides, *model_overrides(world, backbone), "data=imagefolder", f"data.root={world / 'val'}",
            f"data.train_root={world / 'train'}", "train.max_steps=2", "train.threads=1",
            f"train.run_dir={tmp_path / 'run'}"]
    return run_training(compose_cfg("train", args), "python -m splitbench.train " + " ".join(overrides))


def benchmark(world, tmp_path, backbone, *overrides):
    from splitbench.run import execute

    cfg = compose_cfg("config", [*overrides, *model_overrides(world, backbone), "data=imagefolder",
                                 f"data.root={world / 'val'}", "measure.reference=null",
                                 "measure.progress=false", "measure.threads=1", "measure.cache=false"])
    return execute(cfg, tmp_path / "bench")


CASES = [  # (backbone, codec overrides for training and running)
    ("resnet18", ["codec=frankensplit", "codec.split=layer2", "codec.train.batch_size=4"]),
    ("vit_tiny_patch16_224", ["codec=frankensplit", "codec.split=blocks.3", "codec.prior=hyperprior",
                              "codec.train.batch_size=2"]),
    ("resnet18", ["codec=bmshj2018", "codec.lmbda=0.01", "codec.train.batch_size=2"]),
    ("resnet18", ["codec=elic", "codec.lmbda=0.01", "codec.train.batch_size=2", "codec.N=16", "codec.M=32"]),
]


@pytest.mark.parametrize("backbone,overrides", CASES, ids=["frankensplit-resnet18", "frankensplit-vit_tiny",
                                                           "bmshj2018-resnet18", "elic-resnet18"])
def test_train_then_run_from_the_trained_file(world, tmp_path, backbone, overrides):
    entry = train(world, tmp_path, backbone, *overrides)
    assert entry["steps"] == 2 and entry["metrics"]["bytes_per_image"] > 0
    checkpoint = tmp_path / "run" / entry["file"]
    [row] = benchmark(world, tmp_path, backbone, *overrides, f"codec.checkpoint={checkpoint}")
    assert row["n"] == 4 and row["bytes_per_image"] > 100  # real range-coded bytes, 224x224 RGB input
    # training evaluated the same folder with the model's preprocessing: the same bytes (batching aside)
    assert row["bytes_per_image"] == pytest.approx(entry["metrics"]["bytes_per_image"], rel=0.002)
    if overrides[0] == "codec=frankensplit":
        codec = create_codec("frankensplit", checkpoint=str(checkpoint), prior=entry["prior"])
        assert codec.arch.generic and codec.arch.input_size == (3, 224, 224)
        assert len(codec.arch.channels) == (3 if backbone == "resnet18" else 4)  # stride 8 / patch 16
        other = task(world, BACKBONES[1 - BACKBONES.index(backbone)])
        with pytest.raises(ConfigError, match=r"trained for a (ResNet|VisionTransformer) split at") as err:
            codec.bind(other)
        assert "\n" not in str(err.value)
    else:  # channels and stages came from the model: RGB, four stages at 224
        assert entry["arch"]["channels"] == 3 and entry["arch"]["stages"] == 4


@pytest.mark.parametrize("name,options,needs", [
    ("tofc", {}, "tofc needs a timm VisionTransformer server model"),
    ("patchsel", {}, "patchsel needs a timm VisionTransformer server model"),
    ("local", {}, r"local needs an edge model for 3x224x224 images and 1000 classes \(model 'resnet18'\)"),
    ("frankensplit", {}, "frankensplit weights for the grey ViT .* cannot serve model 'resnet18'"),
    ("elic", {}, "elic needs 1-channel images for these weights"),
    ("bmshj2018", {}, "bmshj2018 needs 1-channel images for these weights"),
])
def test_codecs_that_cannot_run_say_what_they_need_in_one_line(world, name, options, needs):
    codec = create_codec(name, **options)
    with pytest.raises(ConfigError, match=needs) as err:
        codec.bind(task(world, "resnet18"))
    assert "\n" not in str(err.value)


def test_frankensplit_split_options_fail_cleanly(world):
    resnet = task(world, "resnet18")
    from baselines.frankensplit.backbone import derive_arch

    with pytest.raises(ConfigError, match="has no split point 'layer9'; valid: act1, layer1"):
        derive_arch(resnet, "factorized", "layer9", {})
    with pytest.raises(ConfigError, match="must be a feature name: act1, layer1"):
        derive_arch(resnet, "factorized", 2, {})
    with pytest.raises(ConfigError, match=r"needs 3 widths, one per stride-2 block"):
        derive_arch(resnet, "factorized", "layer2", {"channels": [8, 8]})
    with pytest.raises(ConfigError, match=r"codec.arch.latent for frankensplit must be integers in \[1, 4096\]"):
        derive_arch(resnet, "factorized", "layer2", {"latent": "wide"})
    with pytest.raises(ConfigError, match=r"latent_block=false .*channels\[-1\] \(64\) must equal codec.arch.latent \(48\)"):
        derive_arch(resnet, "factorized", "layer2", {"channels": [48, 64, 64], "latent": 48, "latent_block": False})
    from baselines.frankensplit.model import Encoder  # the paper's encoder: three stride-2 blocks, the last one the latent's
    paper = derive_arch(resnet, "factorized", "layer2", {"channels": [48, 64, 48], "latent": 48, "latent_block": False})
    assert [block.conv2.out_channels for block in Encoder(paper)] == [48, 64, 48]
    assert [block.conv1.stride for block in Encoder(paper)] == [(2, 2)] * 3 and Encoder(paper)[-1].last
    vit = task(world, "vit_tiny_patch16_224")
    assert derive_arch(vit, "factorized", 4, {}).split == "blocks.3"  # a ViT's k: after k blocks
    with pytest.raises(CheckpointError, match="no shipped frankensplit checkpoint .*split=layer2"):
        create_codec("frankensplit", split="layer2")


@pytest.mark.parametrize("name,split,size,prior", [
    ("tf_efficientnet_lite0", "blocks.2", (3, 128, 128), "factorized"),
    ("convnext_atto", "stages.1", (3, 160, 192), "hyperprior"),  # a non-square input: even latent sides
])
def test_untrained_frankensplit_round_trips_real_bytes_on_other_families(name, split, size, prior):
    import timm

    from baselines.frankensplit import FrankenSplitCodec
    from baselines.frankensplit.backbone import ARCH_KEY, arch_tensor, derive_arch
    from baselines.frankensplit.model import FrankenSplitNet
    from splitbench.models import TaskModel
    from splitbench.zoo import in_memory

    torch.manual_seed(0)
    server = TaskModel(timm.create_model(name).eval(), (0.5,) * 3, (0.5,) * 3, name=name, input_size=size,
                       num_classes=1000)
    arch = derive_arch(server, prior, split, {})
    assert len(arch.channels) == 3 and arch.hw == (size[1] // 8, size[2] // 8)  # stride 8: three blocks
    net = FrankenSplitNet(arch)
    codec = FrankenSplitCodec.from_weights(in_memory({**net.weights(), ARCH_KEY: arch_tensor(arch)}, "untrained"),
                                           prior=prior, split=split)
    codec.bind(server)
    images = torch.randint(0, 256, (2, *size), dtype=torch.uint8)
    with torch.inference_mode():
        y = codec.device_forward(images)
        payloads = codec.encode(y)
        y_hat = codec.decode([p.data for p in payloads])
        logits = codec.server_forward(y_hat)
    center = net.entropy._get_medians().view(1, -1, 1, 1) if prior == "factorized" else torch.zeros(1)
    assert torch.equal(y_hat, torch.round(y - center) + center)
    assert logits.shape == (2, 1000) and all(0 < len(p.data) <= codec.max_payload_bytes() for p in payloads)


def test_training_reads_an_image_folder_as_the_model_sees_it(world, tmp_path):
    """A grey 28x28 server model trains on the RGB folder: train and test images follow its input."""
    args = ["codec=frankensplit", "codec.train.batch_size=4", "data=imagefolder", f"data.root={world / 'val'}",
            f"data.train_root={world / 'train'}", "train.max_steps=2", "train.threads=1",
            f"train.run_dir={tmp_path / 'run'}"]
    entry = run_training(compose_cfg("train", args), "python -m splitbench.train codec=frankensplit")
    assert entry["arch"]["grid"] == 7 and "backbone" not in entry["arch"]  # the shipped layout, grey ViT
    assert entry["metrics"]["test_images"] == 4 and entry["metrics"]["bytes_per_image"] > 0
