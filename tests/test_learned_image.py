"""elic / bmshj2018: real single-stream bitstreams, golden hashes, exact decoding, clear errors."""

import pytest
import torch
from omegaconf import OmegaConf

from splitbench import CheckpointError, ConfigError, PayloadError, create_codec
from splitbench.paths import CONF_DIR

from golden import N_IMAGES, assert_golden, assert_golden_in_fresh_process, cases, encode_images

CODECS = sorted(cases("learned_image"))  # golden md5s and sizes: tests/expected/learned_image.json


def default_codec(name, **override):
    import yaml

    cfg = yaml.safe_load((CONF_DIR / "codec" / f"{name}.yaml").read_text())
    cfg.pop("name")
    return create_codec(name, **{**cfg, **override})


@pytest.fixture(scope="module", params=CODECS)
def bound(request, task_model):
    codec = default_codec(request.param)
    codec.bind(task_model)
    return codec


def test_golden_bitstream(bound, test_images):
    assert_golden("learned_image", bound.name, encode_images(bound, test_images[0][:N_IMAGES]))


def test_same_bytes_in_a_fresh_process():
    assert_golden_in_fresh_process("learned_image")


def test_decoder_recovers_exactly_the_encoders_latents(bound, test_images):
    from baselines.learned_image.stream import LatentCoder

    images = test_images[0][:3]
    with torch.inference_mode():
        for y in bound.device_forward(images).latents:
            coder = LatentCoder(bound.name, bound._tables)
            y_hat_enc = bound._code_latents(coder, y)
            [data] = coder.finish()
            y_hat_dec = bound._decode_latents([data])
            assert torch.equal(y_hat_enc, y_hat_dec)


def test_round_trip_reports_real_bytes_estimate_and_psnr(bound, test_images):
    images, labels = test_images
    with torch.inference_mode():
        payloads = bound.encode(bound.device_forward(images[:8]))
        logits = bound.server_forward(bound.decode([p.data for p in payloads]))
    for p in payloads:
        assert 8 <= len(p.data) < 784 and len(p.data) % 4 == 0  # one rANS stream, smaller than raw
        assert 0 < p.estimated_bits < 8 * len(p.data) + 64   # the estimate sits beside the real size
        assert 15 < p.extras["psnr"] <= 100
    assert (logits.argmax(-1) == labels[:8]).float().mean() >= 0.5
    assert bound.rate_point().startswith("lmbda=") and bound.extra_columns == ("psnr",)


def test_batched_evaluation_matches_the_per_image_path(bound, test_images):
    images = test_images[0][:6]
    with torch.inference_mode():
        blobs, _, decoded = bound.round_trip_batched(images)
        payloads = bound.encode(bound.device_forward(images))
        assert [p.data for p in payloads] == blobs
        assert torch.equal(bound.reconstruct(bound.decode(blobs)), decoded)


@pytest.mark.parametrize("damage", ["drop_word", "flip", "extra_word", "odd_length", "huge"])
def test_damaged_payloads_raise_payload_error(bound, test_images, damage):
    with torch.inference_mode():
        blob = bound.encode(bound.device_forward(test_images[0][1:2]))[0].data
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x5A
    bad = {"drop_word": blob[:-4], "flip": bytes(flipped), "extra_word": blob + b"\x01\x02\x03\x04",
           "odd_length": blob + b"\x00", "huge": bytes(100_000)}[damage]
    with pytest.raises(PayloadError, match=bound.name):
        bound.decode([bad])


def test_fast_scale_indexes_match_compressai():
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    from baselines.learned_image.stream import scale_indexes

    gc = GaussianConditional(get_scale_table().tolist())
    table = get_scale_table()
    scales = torch.cat([torch.rand(20000) * 300, table, table * (1 + 1e-7), table * (1 - 1e-7),
                        torch.tensor([0.0, -1.0, 1e-9])]).reshape(1, 1, -1, 1)
    assert torch.equal(scale_indexes(gc, scales), gc.build_indexes(scales))


def test_official_elic_state_dict_loads_by_path(tmp_path, task_model, test_images):
    """codec.checkpoint=PATH with compressai's own Elic2022Official(N=192, M=320) layout (RGB)."""
    from compressai.models import Elic2022Official

    torch.manual_seed(0)
    state = {k: v.half() if v.is_floating_point() else v for k, v in Elic2022Official().state_dict().items()}
    path = tmp_path / "elic_official.pth"
    torch.save(state, path)
    codec = create_codec("elic", checkpoint=str(path))
    codec.bind(task_model)
    assert codec.net.arch["N"] == 192 and codec.net.arch["M"] == 320 and codec.net.arch["stages"] == 4
    assert codec._padded == (64, 64) and codec.rate_point() == "ckpt N192/M320"
    with torch.inference_mode():
        payloads = codec.encode(codec.device_forward(test_images[0][:1]))
        decoded = codec.reconstruct(codec.decode([payloads[0].data]))
    assert decoded.shape == (1, 1, 28, 28) and decoded.dtype == torch.uint8


def test_user_errors_name_the_problem():
    with pytest.raises(CheckpointError, match=r"no shipped elic checkpoint for lmbda=0.1234; shipped: lmbda=0.0018.*codec.lmbda=0.1234"):
        default_codec("elic", lmbda=0.1234)
    with pytest.raises(CheckpointError, match="trained with"):
        default_codec("elic", N=64)
    with pytest.raises(ConfigError, match="codec.variant for elic must be one of official, chandelier, got 'nosuch'"):
        default_codec("elic", variant="nosuch")
    with pytest.raises(ConfigError, match="codec.lmbda for bmshj2018 must be a number > 0, got -1"):
        default_codec("bmshj2018", lmbda=-1)
    with pytest.raises(CheckpointError, match="does not exist"):
        default_codec("elic", checkpoint="/nonexistent/elic.pth")


def test_measure_records_psnr_estimate_and_flops(bound, task_model):
    """Through the real runner's measure(): FLOP counting works (GDN included), psnr is recorded."""
    from splitbench.data import build_dataset
    from splitbench.measure import measure

    ds = build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": 3})
    records = measure(bound, task_model, ds, batch_size=1, progress=False)
    assert len(records) == 3 and records["psnr"].between(15, 100).all()
    assert (records["est_bits"] > 0).all() and (records["flops_device"] > 0).all()
    assert (records["bytes"] * 8 > records["est_bits"] * 0.8).all()
