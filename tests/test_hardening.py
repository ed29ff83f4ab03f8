"""Issue #11, item by item: the two hang reproducers, payload length bounds, strict image framing,
option validation, error messages (codec, index, reason, no address), frankensplit memory."""
from __future__ import annotations

import re
import zlib

import pytest
import torch

from splitbench import ConfigError, PayloadError, create_codec, list_codecs
from splitbench.codecs import CODECS
from splitbench.codecs.base import check_options
from splitbench.fuzz import MEMORY_LIMIT_MIB, Child, build_codec

ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


@pytest.fixture(scope="module")
def child():
    c = Child()
    yield c
    c.close()


@pytest.fixture(scope="module")
def real(task_model, test_images):
    """name -> (bound codec, real offloaded payloads of the first test images)."""
    out = {}
    for name in list_codecs():
        codec = build_codec(name, task_model)
        with torch.inference_mode():
            out[name] = codec, [p.data for p in codec.encode(codec.device_forward(test_images[0][:8])) if p.offloaded]
    return out


# -- 1. the reproducers: a PayloadError in under a second, in a child a hang could not freeze -------------
ELIC_BIT_207 = bytes.fromhex("9795652a24d000003623bf03d72a78fea97501b85a7c6338f713e5b1f43b4dd9"
                             "1524e89b17bcae3ebad48b5dfdc098b40367689565b5a7581ba7dca463b5c251")


@pytest.mark.parametrize("name, payload", [("bmshj2018", bytes.fromhex("e346868e8a865aec4325ec9a")),
                                           ("elic", ELIC_BIT_207)])
def test_issue_reproducers_fail_fast(child, name, payload):
    child.load(name)
    answer = child.ask(payload, timeout=60)
    assert answer is not None, "decoder hung"
    assert answer["outcome"] == "clean", answer["message"]
    assert answer["seconds"] < 1.0


def test_elic_reproducer_is_a_real_image_with_one_flipped_bit(real):
    codec, payloads = real["elic"]
    blob = bytearray(payloads[3])
    blob[207 // 8] ^= 1 << (207 % 8)
    assert bytes(blob) == ELIC_BIT_207


def test_out_of_range_symbols_never_reach_the_encoder(real):
    codec, payloads = real["bmshj2018"]
    with pytest.raises(PayloadError, match=r"bmshj2018 payload 2 .*symbol lies outside"):
        codec.decode(payloads[:2] + [bytes.fromhex("e346868e8a865aec4325ec9a")])


# -- length bounds: every codec's encoder stays under max_payload_bytes, and decoders refuse more ---------
@pytest.mark.parametrize("name", list_codecs())
def test_max_payload_bytes_bounds_real_and_noise_payloads(name, real):
    codec, payloads = real[name]
    noise = torch.randint(0, 256, (8, *codec.task.input_size), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    with torch.inference_mode():
        payloads = payloads + [p.data for p in codec.encode(codec.device_forward(noise)) if p.offloaded]
    limit = codec.max_payload_bytes()
    assert all(len(p) <= limit for p in payloads), (max(map(len, payloads)), limit)
    with pytest.raises(PayloadError, match=name):
        codec.decode([(payloads[0] if payloads else b"") + bytes(limit + 1)])


@pytest.mark.parametrize("options", [{"quality": 100}, {"quality": 100, "abbreviated": True}])
def test_jpeg_bound_holds_at_top_quality(task_model, options):
    codec = create_codec("jpeg", **options)
    codec.bind(task_model)
    noise = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    assert max(len(p.data) for p in codec.encode(noise)) <= codec.max_payload_bytes()


# -- 4. strict image formats --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [("jpeg", {}), ("jpeg", {"abbreviated": True}), ("png", {}),
                                           ("webp", {}), ("webp", {"lossless": True})])
@pytest.mark.parametrize("damage", ["trailing_byte", "trailing_zeros", "twice", "truncated"])
def test_image_payload_must_be_exactly_one_image(task_model, test_images, name, options, damage):
    codec = create_codec(name, **options)
    codec.bind(task_model)
    blob = codec.encode(test_images[0][:1])[0].data
    codec.decode([blob])  # the real payload decodes
    bad = {"trailing_byte": blob + b"\x00", "trailing_zeros": blob + bytes(64), "twice": blob + blob,
           "truncated": blob[:-1]}[damage]
    with pytest.raises(PayloadError, match=rf"{name} .*payload 1 \({len(bad)} bytes\)") as err:
        codec.decode([blob, bad])
    if damage != "truncated":
        assert "trailing bytes after the image end" in str(err.value)


def test_patchsel_jpeg_mosaic_rejects_trailing_data(task_model, test_images):
    codec = create_codec("patchsel", pixels="jpeg", eta=0.0)
    codec.bind(task_model)
    blob = codec.encode(codec.device_forward(test_images[0][:1]))[0].data
    codec.decode([blob])
    with pytest.raises(PayloadError, match=r"patchsel payload 0: .*trailing bytes"):
        codec.decode([blob + blob[-40:]])


# -- 4. option validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options, message", [
    ("webp", {"method": 99}, r"codec.method for webp must be an integer in \[0, 6\], got 99"),
    ("webp", {"lossless": []}, r"codec.lossless for webp must be true or false, got \[\]"),
    ("jpeg", {"abbreviated": []}, r"codec.abbreviated for jpeg must be true or false"),
    ("jpeg", {"quality": []}, r"codec.quality for jpeg must be an integer in \[1, 100\], got \[\]"),
    ("png", {"compress_level": "9"}, r"codec.compress_level for png must be an integer in \[0, 9\]"),
    ("frankensplit", {"arch": []}, r"codec.arch for frankensplit must be a mapping or null, got \[\]"),
    ("elic", {"checkpoint": []}, r"codec.checkpoint for elic must be a string or null"),
    ("tofc", {"finetune_tail": []}, r"codec.finetune_tail for tofc must be true or false"),
    ("tofc", {"hidden": []}, r"codec.hidden for tofc must be an integer >= 1"),
    ("patchsel", {"abbreviated": "no"}, r"codec.abbreviated for patchsel must be true or false"),
])
def test_wrongly_typed_or_out_of_range_options_are_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        create_codec(name, **options)


@pytest.mark.parametrize("options", [[], "quality=5", None, {1: 2}])
def test_options_must_be_a_mapping_of_names(options):
    list_codecs()
    with pytest.raises(ConfigError, match="codec options for 'jpeg' must be a mapping"):
        check_options(CODECS.get("jpeg"), options)


# -- 4. error messages: codec, the payload's index in the batch, a reason, no address ------------------------
@pytest.mark.parametrize("name", [n for n in list_codecs() if n != "local"])
@pytest.mark.parametrize("bad", [b"", b"\x00" * 7, bytes(range(256)) * 3, b"\x89PNG\r\n\x1a\n" + bytes(40)])
def test_errors_name_codec_and_batch_index_without_addresses(name, real, bad):
    codec, payloads = real[name]
    good = payloads[:3]
    with pytest.raises(PayloadError) as err:
        codec.decode(good + [bad])
    text = str(err.value)
    assert text.startswith(name) and f"payload {len(good)}" in text, text
    assert not ADDRESS.search(text) and "\n" not in text, text


def test_pillow_identification_errors_hide_the_buffer_address(task_model):
    codec = create_codec("png")
    codec.bind(task_model)
    body = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + bytes(13) + bytes(4)
    bad = body + (0).to_bytes(4, "big") + b"IEND" + zlib.crc32(b"IEND").to_bytes(4, "big")
    with pytest.raises(PayloadError, match="png payload 0") as err:
        codec.decode([bad])
    assert "BytesIO" not in str(err.value) and not ADDRESS.search(str(err.value))


# -- 3. frankensplit: forged and over-long payloads cost bounded memory ---------------------------------------
def test_frankensplit_forged_and_huge_payloads_stay_small(child, real):
    codec, _ = real["frankensplit"]
    limit = codec.max_payload_bytes()
    body = bytes(range(256)) * (limit // 256)
    body = body[:(limit - 4) // 4 * 4]
    forged = zlib.crc32(body).to_bytes(4, "big") + body  # passes the CRC: the rANS decoder really runs
    huge = bytes(10 << 20)
    huge_forged = zlib.crc32(huge).to_bytes(4, "big") + huge
    child.load("frankensplit")
    peaks = []
    for payload in (forged, huge_forged):
        answer = child.ask(payload, timeout=60)
        assert answer is not None and answer["outcome"] in ("clean", "accepted"), answer
        assert answer["seconds"] < 2.0
        peaks.append(answer["peak_kib"] / 1024)
    assert "longer than the" in answer["message"]
    # the meter sees the forged decode's zero-padded copies (> 1 MiB), and both stay under the bound
    assert peaks[0] > 1 and max(peaks) < MEMORY_LIMIT_MIB, peaks


def test_frankensplit_crc_catches_every_single_byte_damage(real):
    codec, payloads = real["frankensplit"]
    blob = payloads[0]
    for i in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= mask
            with pytest.raises(PayloadError, match="frankensplit payload 0"):
                codec.decode([bytes(bad)])
