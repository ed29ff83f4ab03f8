import pytest

from splitbench import ConfigError, create_codec, list_codecs, register_codec
from splitbench.codecs import CODECS, Codec, accepted_options
from splitbench.paths import CONF_DIR


def test_builtin_codecs_registered():
    assert {"raw", "jpeg", "webp", "png"} <= set(list_codecs())


def test_every_codec_has_a_config_and_every_config_a_codec():
    import yaml

    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF_DIR / "codec").glob("*.yaml")}
    assert set(configs) == set(list_codecs())
    for stem, cfg in configs.items():
        assert cfg["name"] == stem
        # every key of the yaml is an option the codec accepts (and so is validated)
        assert set(cfg) - {"name"} <= set(accepted_options(CODECS.get(stem))), stem


def test_unknown_codec_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        create_codec("jpg")
    msg = str(err.value)
    assert "unknown codec 'jpg'" in msg and "did you mean 'jpeg'" in msg and "raw" in msg


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"no option 'codec.qualty'.*codec.quality"):
        create_codec("jpeg", qualty=3)


@pytest.mark.parametrize("bad", [0, 101, "50", True])
def test_bad_quality_is_rejected(bad):
    with pytest.raises(ConfigError, match="codec.quality"):
        create_codec("jpeg", quality=bad)


def test_third_party_codec_registers_the_same_way():
    @register_codec("_test_identity")
    class Identity(Codec):
        def __init__(self, scale: int = 1):
            self.scale = scale

        def encode(self, features):
            return []

        def decode(self, data):
            return data

    try:
        codec = create_codec("_test_identity", scale=2)
        assert codec.name == "_test_identity" and codec.options() == {"scale": 2}
        assert "_test_identity" in list_codecs()
    finally:
        CODECS._entries.pop("_test_identity")
