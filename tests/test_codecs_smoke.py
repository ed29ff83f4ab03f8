"""A smoke test for every registered codec (timm-style): round trip, real bytes, determinism,
and a clear error for a corrupt payload."""
import pytest
import torch
import yaml

from splitbench import PayloadError, create_codec, list_codecs
from splitbench.paths import CONF_DIR


def codec_from_config(name):
    cfg = yaml.safe_load((CONF_DIR / "codec" / f"{name}.yaml").read_text())
    return create_codec(cfg.pop("name"), **cfg)


@pytest.mark.parametrize("name", list_codecs())
def test_round_trip(name, task_model, test_images):
    images, labels = test_images
    codec = codec_from_config(name)
    codec.bind(task_model)
    with torch.inference_mode():
        payloads = codec.encode(codec.device_forward(images[:4]))
        assert len(payloads) == 4
        again = codec.encode(codec.device_forward(images[:4]))
        assert [p.data for p in payloads] == [p.data for p in again], "same input, same bytes"
        sent = [p.data for p in payloads if p.offloaded]
        for p in payloads:
            assert (len(p.data) > 0) == p.offloaded
        if sent:
            logits = codec.server_forward(codec.decode(sent))
            assert logits.shape == (len(sent), task_model.num_classes)
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_codecs())
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_payload_gives_clear_error(name, damage, task_model, test_images):
    images, _ = test_images
    codec = codec_from_config(name)
    codec.bind(task_model)
    with torch.inference_mode():
        payloads = [p for p in codec.encode(codec.device_forward(images[:8])) if p.offloaded]
    if not payloads:
        pytest.skip("codec answered every sample locally")
    blob = payloads[0].data
    bad = {"truncate": blob[: len(blob) // 2], "garbage": bytes(range(256)) * 4, "empty": b""}[damage]
    with pytest.raises(PayloadError, match=name.split("_")[0]):
        codec.decode([bad])


def test_raw_is_the_pixel_buffer(task_model, test_images):
    images, _ = test_images
    codec = create_codec("raw")
    codec.bind(task_model)
    payload = codec.encode(images[:1])[0]
    assert payload.data == images[0].numpy().tobytes() and len(payload.data) == 28 * 28
    assert torch.equal(codec.decode([payload.data])[0], images[0])


def test_abbreviated_jpeg_decodes_to_the_same_pixels_as_full(task_model, test_images):
    images, _ = test_images
    full, abbrev = create_codec("jpeg", quality=50), create_codec("jpeg", quality=50, abbreviated=True)
    full.bind(task_model)
    abbrev.bind(task_model)
    pf, pa = full.encode(images[:4]), abbrev.encode(images[:4])
    assert all(len(a.data) < len(f.data) - 250 for a, f in zip(pa, pf)), "tables must not travel"
    assert torch.equal(full.decode([p.data for p in pf]), abbrev.decode([p.data for p in pa]))


def test_lossless_codecs_are_lossless(task_model, test_images):
    images, _ = test_images
    for codec in (create_codec("png"), create_codec("webp", lossless=True)):
        codec.bind(task_model)
        assert torch.equal(codec.decode([p.data for p in codec.encode(images)]), images)


def test_oversized_image_payload_is_rejected_before_decoding(task_model):
    from PIL import Image
    import io

    codec = create_codec("png")
    codec.bind(task_model)
    buf = io.BytesIO()
    Image.new("L", (1000, 1000)).save(buf, "PNG")  # ~1 KB on the wire, 1 MB of pixels
    assert len(buf.getvalue()) < codec.max_payload_bytes()
    with pytest.raises(PayloadError, match="1000x1000, expected 28x28"):
        codec.decode([buf.getvalue()])
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, "PNG")  # longer than any 28x28 PNG: rejected by its length
    with pytest.raises(PayloadError, match="longer than the .* bytes this codec's encoder can produce"):
        codec.decode([buf.getvalue()])
