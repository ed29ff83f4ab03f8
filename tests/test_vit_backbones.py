"""TOFC, patch selection and ``local`` on timm ViTs other than the shipped grey ones (issue #13).

Random-weight vit_tiny_patch16_224 (196 patch tokens + class token, dim 192) saved as a state dict
and a tiny 224x224 RGB folder made from real photos: tofc trains 2 steps with the framework's loop
(its PCA sees fewer tokens than dimensions) and runs from the trained file with real bytes;
patchsel / local take the edge ViT by name and path and send real kept-patch bytes. Models
these codecs cannot drive fail at bind with one line.
"""
from __future__ import annotations

import pytest
import torch
from backbones import compose_cfg, make_world, task
from backbones import model_overrides as shared_overrides

from splitbench import ConfigError, create_codec
from splitbench.train import run_training

VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Random-weight ViT-Tiny, resnet18 and two ViTs that do not fit ViT-Tiny's 14x14 grid of 224x224
    images (384x384 images; 32-px patches), plus train/ and val/ folders of 4 RGB photos each."""
    return make_world(tmp_path_factory.mktemp("vits"), (VIT, "resnet18", "vit_tiny_patch16_384",
                                                         "vit_small_patch32_224"))


def model_overrides(world, name=VIT):
    return shared_overrides(world, name)


def benchmark(world, tmp_path, *overrides, reference=None):
    from splitbench.run import execute

    cfg = compose_cfg("config", [*overrides, *model_overrides(world), "data=imagefolder",
                                 f"data.root={world / 'val'}", f"measure.reference={reference or 'null'}",
                                 "measure.progress=false", "measure.threads=1", "measure.cache=false"])
    return execute(cfg, tmp_path / "bench")


def test_tofc_trains_and_runs_on_vit_tiny(world, tmp_path):
    opts = ["codec=tofc", "codec.split=2", "codec.n_clusters=8", "codec.train.batch_size=2",
            "codec.train.images=4", "codec.hyper_channels=16"]
    args = [*opts, *model_overrides(world), "data=imagefolder", f"data.root={world / 'val'}",
            f"data.train_root={world / 'train'}", "train.max_steps=2", "train.threads=1",
            f"train.run_dir={tmp_path / 'run'}"]
    entry = run_training(compose_cfg("train", args), "python -m splitbench.train " + " ".join(opts))
    assert entry["steps"] == 2 and entry["arch"]["dim"] == 192
    # c0/c1 are not ImageNet classes: the training evaluation reports no accuracy, never 0
    assert entry["metrics"]["test_top1"] != entry["metrics"]["test_top1"]  # NaN
    checkpoint = tmp_path / "run" / entry["file"]
    [row] = benchmark(world, tmp_path, *opts, f"codec.checkpoint={checkpoint}")
    assert row["n"] == 4 and row["bytes_per_image"] > 20 and row["tokens"] == 9  # class token + 8 merged
    assert row["bytes_per_image"] == pytest.approx(entry["metrics"]["bytes_per_image"], rel=0.002)


def test_pca_init_with_fewer_tokens_than_dimensions_is_an_orthonormal_basis():
    from baselines.tofc.entropy import SelectiveHyperprior

    model = SelectiveHyperprior(192, 16, 64, 2, "laplace", 1.0, "pca")
    tokens = torch.randn(10, 192)
    model.init_from_data(tokens)
    eye = model.basis @ model.basis.T
    assert torch.allclose(eye, torch.eye(192), atol=1e-5)
    assert torch.allclose(model.from_latent(model.to_latent(tokens)), tokens, atol=1e-4)


@pytest.mark.parametrize("edge", [VIT, f"timm:{VIT}"])
def test_local_answers_on_the_edge_vit(world, tmp_path, edge):
    rows = benchmark(world, tmp_path, "codec=local", f"codec.edge_model={edge}",
                      f"codec.edge_checkpoint={world / (VIT + '.pt')}", reference="raw")
    [row] = [r for r in rows if r["codec"] == "local"]
    assert row["n"] == 4 and row["bytes_per_image"] == 0
    assert row["agreement"] == 1.0  # the edge is the same weights as the server here


def test_patchsel_sends_kept_patches_of_vit_tiny(world, tmp_path):
    [row] = benchmark(world, tmp_path, "codec=patchsel", "codec.eta=0", "codec.selection=topk", "codec.k=40",
                      f"codec.edge_model=timm:{VIT}", f"codec.edge_checkpoint={world / (VIT + '.pt')}")
    assert row["n"] == 4 and row["kept_patches"] == 40 and row["token_cost"] == pytest.approx(40 / 196)
    # 40 RGB 16x16 patches deflated (~30 kB raw) plus a count and the subset's rank: real bytes
    assert 3000 < row["bytes_per_image"] < 40 * 16 * 16 * 3 + 64


@pytest.mark.parametrize("name", ["tofc", "patchsel"])
def test_a_resnet_server_is_refused_in_one_line(world, name):
    options = {"edge_model": VIT, "edge_checkpoint": str(world / f"{VIT}.pt")} if name == "patchsel" else {}
    codec = create_codec(name, **options)
    with pytest.raises(ConfigError, match=f"{name} needs a timm VisionTransformer server model") as err:
        codec.bind(task(world, "resnet18"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("edge,needs", [
    ("vit_tiny_patch16_384", r"patchsel needs an edge model for 3x224x224 images.* takes 3x384x384"),
    ("vit_small_patch32_224", r"the edge model's patch grid .*rows=7, cols=7.* differs from the server model "
                              r"'vit_tiny_patch16_224'.*rows=14, cols=14"),
])
def test_patchsel_refuses_edge_and_server_that_do_not_share_a_patch_grid(world, edge, needs):
    codec = create_codec("patchsel", edge_model=f"timm:{edge}", edge_checkpoint=str(world / f"{edge}.pt"))
    with pytest.raises(ConfigError, match=needs) as err:
        codec.bind(task(world, VIT))
    assert "\n" not in str(err.value)
