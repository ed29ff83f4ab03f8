"""FrankenSplit: real round trip, golden bitstream, damaged payloads, options, training smoke test."""
from __future__ import annotations

import json

import pytest
import torch

from splitbench import CheckpointError, ConfigError, PayloadError, create_codec
from splitbench.zoo import in_memory, load_manifest

from conftest import run_cli
from golden import N_IMAGES, assert_golden, assert_golden_in_fresh_process, encode_images

# golden md5 and sizes: tests/expected/frankensplit.json (the default shipped point). Regenerated
# deliberately when the one-byte check became a 4-byte CRC-32 (issue #11): same rANS strings, every
# payload 3 bytes longer.


@pytest.fixture(scope="module")
def codec(task_model):
    c = create_codec("frankensplit")
    c.bind(task_model)
    return c


def payloads_of(codec, images):
    with torch.inference_mode():
        return codec.encode(codec.device_forward(images))


def test_bytes_decode_to_the_rounded_latents(codec, test_images):
    images, labels = test_images
    with torch.inference_mode():
        y = codec.device_forward(images)
        payloads = codec.encode(y)
        y_hat = codec.decode([p.data for p in payloads])
        medians = codec.net.entropy._get_medians().view(1, -1, 1, 1)
        assert torch.equal(y_hat, torch.round(y - medians) + medians)
        logits = codec.server_forward(y_hat)
    assert (logits.argmax(-1) == labels).float().mean() >= 0.75
    for p in payloads:  # real bytes: estimate + rANS flush (8 bytes) + word padding + 4-byte CRC
        assert p.estimated_bits / 8 <= len(p.data) <= p.estimated_bits / 8 + 16


def test_golden_bitstream(codec, test_images):
    assert_golden("frankensplit", "default", encode_images(codec, test_images[0][:N_IMAGES]))


def test_same_bytes_in_a_fresh_process():
    assert_golden_in_fresh_process("frankensplit")


def test_every_truncation_and_byte_flip_is_an_error_or_a_harmless_decode(codec, test_images):
    blob = payloads_of(codec, test_images[0][:1])[0].data
    for n in range(len(blob)):
        with pytest.raises(PayloadError, match="frankensplit"):
            codec.decode([blob[:n]])
    passed = 0
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x5A
        try:
            feats = codec.decode([bytes(bad)])
        except PayloadError as err:
            assert "frankensplit" in str(err)
        else:  # a damage the CRC-32 cannot see (1 in 2**32) decodes to wrong latents, no crash
            passed += 1
            assert torch.isfinite(feats).all()
    assert passed == 0


@pytest.mark.parametrize("prior", ["factorized", "hyperprior"])
def test_untrained_networks_round_trip_both_priors(prior, task_model, test_images):
    from baselines.frankensplit import FrankenSplitCodec, build_arch
    from baselines.frankensplit.model import FrankenSplitNet

    torch.manual_seed(0)
    net = FrankenSplitNet(build_arch(prior, 1, None))
    c = FrankenSplitCodec.from_weights(in_memory(net.weights(), "untrained"), lmbda=0.1, prior=prior)
    c.bind(task_model)
    with torch.inference_mode():
        y = c.device_forward(test_images[0][:3])
        payloads = c.encode(y)
        y_hat = c.decode([p.data for p in payloads])
        logits = c.server_forward(y_hat)
    expected = (torch.round(y - net.entropy._get_medians().view(1, -1, 1, 1)) + net.entropy._get_medians().view(
        1, -1, 1, 1)) if prior == "factorized" else torch.round(y)
    assert torch.equal(y_hat, expected)
    assert logits.shape == (3, 10)
    with pytest.raises(PayloadError, match="frankensplit"):
        c.decode([payloads[0].data[:-3]])


def test_options_are_validated():
    with pytest.raises(ConfigError, match="codec.prior.*factorized, hyperprior"):
        create_codec("frankensplit", prior="gaussian")
    with pytest.raises(ConfigError, match="codec.lmbda for frankensplit must be a number > 0, got -1"):
        create_codec("frankensplit", lmbda=-1)
    with pytest.raises(ConfigError, match="codec.arch has no key"):
        create_codec("frankensplit", arch={"width": 3})
    with pytest.raises(ConfigError, match="latent_block=false needs a backbone split"):
        create_codec("frankensplit", arch={"latent_block": False})
    with pytest.raises(CheckpointError, match=r"no shipped frankensplit checkpoint.*shipped: lmbda=\d"):
        create_codec("frankensplit", lmbda=0.123456)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_codec("frankensplit", checkpoint="/nonexistent/fs.pt")


def test_shipped_points_have_complete_manifest_entries():
    entries = {n: e for n, e in load_manifest().items() if e.get("family") == "frankensplit"}
    assert len(entries) >= 5
    for name, e in entries.items():
        assert e["size"] < 2_000_000, name
        assert e["command"].startswith("python -m splitbench.train codec=frankensplit"), name
        assert {"test_top1", "bytes_per_image", "est_bits_per_image"} <= set(e["metrics"]), name
        assert {"params", "size_kb_fp16", "mflops"} <= set(e["device_encoder"]), name
        create_codec("frankensplit", lmbda=e["lmbda"], prior=e["prior"], split=e["split"])  # loads
