"""patchsel / local: wire format, selection and gate rules, server-side token placement, real-byte
round trips, corrupt payloads, golden bitstreams, and a two-step fine-tune smoke test."""
import math
import random

import numpy as np
import pytest
import torch

from golden import N_IMAGES, assert_golden, assert_golden_in_fresh_process, bound_codec, cases, encode_images
from splitbench import ConfigError, PayloadError, create_codec
from baselines.patchsel.policy import select, uncertainty
from baselines.patchsel.wire import (Grid, JpegPixels, decode_lossless, encode_lossless, mask_bytes,
                                     pack_payload, rank_subset, unpack_payload, unrank_subset)

GRID = Grid(channels=1, rows=7, cols=7, patch=4)
# golden md5s and sizes of the first 4 test images (shipped checkpoints, eta=0 so every image is
# offloaded): tests/expected/patchsel.json


@pytest.fixture(scope="module")
def codec(task_model):
    c = create_codec("patchsel", eta=0.0)
    c.bind(task_model)
    return c


# -- wire format ---------------------------------------------------------------------------------
def test_mask_rank_round_trip_and_size():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 49)
        idx = sorted(rng.sample(range(49), n))
        rank = rank_subset(idx)
        assert rank < math.comb(49, n) and unrank_subset(rank, n) == idx
    sizes = [mask_bytes(49, n) for n in range(1, 50)]
    assert max(sizes) <= 7 and sizes[-1] == 0  # never more than a 49-bit bitmap; nothing when all kept


def test_lossless_pixels_round_trip_exactly(test_images):
    image = test_images[0][3].numpy()
    idx = np.array([0, 5, 6, 24, 30, 48])
    blob = encode_lossless(GRID, image, idx)
    assert np.array_equal(decode_lossless(GRID, blob, idx, "patchsel"), GRID.to_patches(image)[idx])


def test_jpeg_mosaic_round_trip_is_close(test_images):
    image = test_images[0][3].numpy()
    idx = np.arange(10, 30)
    coder = JpegPixels(quality=95, abbreviated=True)
    patches = coder.decode(GRID, coder.encode(GRID, image, idx), idx, "patchsel")
    assert patches.shape == (20, 1, 4, 4)
    assert np.abs(patches.astype(int) - GRID.to_patches(image)[idx]).mean() < 4


def test_mask_count_not_matching_pixels_is_a_payload_error(test_images):
    image = test_images[0][0].numpy()
    idx = np.array([3, 4, 10, 11, 17])
    pixels = encode_lossless(GRID, image, idx)
    lying = pack_payload(GRID, idx[:3], pixels)  # mask says 3 patches, pixels hold 5
    mask, pix = unpack_payload(GRID, lying, "patchsel")
    with pytest.raises(PayloadError, match="patchsel payload 0: the mask has 3 patches"):
        decode_lossless(GRID, pix, mask, "patchsel")
    coder = JpegPixels(75, True)
    lying = pack_payload(GRID, np.arange(8), coder.encode(GRID, image, np.arange(20)))
    mask, pix = unpack_payload(GRID, lying, "patchsel")
    with pytest.raises(PayloadError, match="mask has 8 patches .* but the JPEG is 28x12"):
        coder.decode(GRID, pix, mask, "patchsel")


@pytest.mark.parametrize("blob,needle", [
    (b"", "empty"), (b"\x00abc", "keeps 0 patches"), (b"\x32", "exceeds its limit 49"),
    (b"\x01\xff", "mask rank 255 is out of range"), (b"\x01\x05", "no pixel data"),
])
def test_bad_headers_are_payload_errors(blob, needle):
    with pytest.raises(PayloadError, match=needle):
        unpack_payload(GRID, blob, "patchsel")


# -- gate and selection --------------------------------------------------------------------------
def test_gate_rules():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    assert uncertainty(logits, "min_entropy").tolist() == pytest.approx([1.0, math.log2(3)])
    assert uncertainty(logits, "shannon").tolist() == pytest.approx([1.5, math.log2(3)])
    assert uncertainty(logits, "margin").tolist() == pytest.approx([0.75, 1.0])


def test_selection_rules():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    assert select(scores, "cumulative", delta=0.85, k=0, threshold=0)[0].tolist() == [False, True, True, False]
    assert select(scores, "cumulative", delta=0.1, k=0, threshold=0)[0].tolist() == [False, True, False, False]
    assert select(scores, "cumulative", delta=1.0, k=0, threshold=0)[0].all()
    assert select(scores, "topk", delta=0, k=3, threshold=0)[0].tolist() == [True, True, True, False]
    assert select(scores, "threshold", delta=0, k=0, threshold=0.3)[0].tolist() == [False, True, True, False]


@pytest.mark.parametrize("options,needle", [
    ({"gate": "entropy"}, "codec.gate for patchsel must be one of min_entropy, shannon, margin"),
    ({"selection": "best"}, "codec.selection for patchsel must be one of cumulative, topk, threshold"),
    ({"delta": 1.5}, r"codec.delta for patchsel must be a number in \[0, 1\], got 1.5"), ({"pixels": "png"}, "codec.pixels for patchsel must be one of"),
    ({"score": "grad"}, "codec.score for patchsel must be one of cls_attention, rollout"),
])
def test_bad_options_are_config_errors(options, needle):
    with pytest.raises(ConfigError, match=needle):
        create_codec("patchsel", **options)


# -- the codec end to end ------------------------------------------------------------------------
def test_all_patches_kept_equals_the_full_server_model(task_model, test_images):
    images = test_images[0][:8]
    c = create_codec("patchsel", eta=0.0, selection="topk", k=49)
    c.bind(task_model)
    with torch.inference_mode():
        logits = c.server_forward(c.decode([p.data for p in c.encode(c.device_forward(images))]))
        assert torch.allclose(logits, task_model(images), atol=1e-5)


def test_patchsel_sends_fewer_patches_and_reports_them(codec, test_images):
    with torch.inference_mode():
        payloads = codec.encode(codec.device_forward(test_images[0]))
    kept = [p.extras["kept_patches"] for p in payloads]
    assert all(p.offloaded for p in payloads) and 1 <= min(kept) and max(kept) < 49
    assert all(p.extras["token_cost"] == k / 49 for p, k in zip(payloads, kept))


def test_gate_answers_confident_images_locally(task_model, test_images):
    c = create_codec("patchsel", eta=1e9)  # everything is "certain"
    c.bind(task_model)
    local = create_codec("local")
    with torch.inference_mode():
        payloads = c.encode(c.device_forward(test_images[0]))
        ref = local.encode(local.device_forward(test_images[0]))
    assert all(not p.offloaded and p.data == b"" for p in payloads)
    assert [p.local_prediction for p in payloads] == [p.local_prediction for p in ref]


def test_local_codec_sends_nothing_and_rejects_payloads(test_images):
    local = create_codec("local")
    with torch.inference_mode():
        payloads = local.encode(local.device_forward(test_images[0]))
    assert all(p.data == b"" and not p.offloaded for p in payloads)
    with pytest.raises(PayloadError, match="local sends no payload"):
        local.decode([b"x"])


@pytest.mark.parametrize("pixels", ["lossless", "jpeg"])
def test_golden_bitstream(pixels, task_model, test_images):
    codec = bound_codec("patchsel", task_model, **cases("patchsel")[pixels]["options"])
    assert_golden("patchsel", pixels, encode_images(codec, test_images[0][:N_IMAGES]))


def test_same_bytes_in_a_fresh_process():
    assert_golden_in_fresh_process("patchsel")
