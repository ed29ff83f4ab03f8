"""Declared options: one declaration per codec/profile, checked and recorded on every construction,
and the YAML files restating exactly the declared defaults."""
from __future__ import annotations

from typing import Annotated

import pytest
import yaml

from splitbench.codecs import CODECS, Codec, Payload, create_codec, list_codecs
from splitbench.errors import ConfigError
from splitbench.options import OneOf, Range, declared, defaults
from splitbench.paths import CONF_DIR


def test_a_codec_built_directly_records_its_options_with_defaults():
    from baselines.image_codecs import JpegCodec

    assert JpegCodec(quality=10).options() == {"quality": 10, "abbreviated": False}
    assert JpegCodec(10, True).options() == {"quality": 10, "abbreviated": True}
    assert create_codec("jpeg").options() == JpegCodec().options() == {"quality": 75, "abbreviated": False}
    assert JpegCodec(quality=10).options() != JpegCodec(quality=90).options()  # distinct cache keys


def test_direct_construction_is_validated_like_create_codec():
    from baselines.image_codecs import JpegCodec, WebpCodec

    with pytest.raises(ConfigError, match=r"codec.quality for jpeg must be an integer in \[1, 100\], got 0"):
        JpegCodec(quality=0)
    with pytest.raises(ConfigError, match=r"codec.method for webp must be an integer in \[0, 6\], got 7"):
        WebpCodec(method=7)
    with pytest.raises(ConfigError, match=r"no option 'codec.qualty' \(did you mean 'codec.quality'\?\)"):
        JpegCodec(qualty=5)


class _Base(Codec):
    def __init__(self, width: int) -> None:
        self.width = width

    def encode(self, features):
        return [Payload(b"")]

    def decode(self, data):
        return data


class _Child(_Base):
    name = "child"
    training_options = frozenset({"train"})

    def __init__(self, mode: Annotated[str, OneOf("a", "b")] = "a", level: Annotated[float, Range(0, 1)] = 0.5,
                 train: dict | None = None) -> None:
        super().__init__(width=3)


def test_the_outermost_constructor_records_and_training_knobs_are_left_out():
    child = _Child(mode="b", train={"steps": 1})
    assert child.options() == {"mode": "b", "level": 0.5} and child.width == 3
    with pytest.raises(ConfigError, match="codec.mode for child must be one of a, b, got 'c'"):
        _Child(mode="c")
    with pytest.raises(ConfigError, match=r"codec.level for child must be a number in \[0, 1\], got 2"):
        _Child(level=2)
    with pytest.raises(ConfigError, match="codec.train for child must be a mapping or null"):
        _Child(train=[1])


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "codec").glob("*.yaml")))
def test_yaml_restates_exactly_the_declared_defaults(name):
    """YAML and code cannot disagree: every declared option (training knobs apart) is in the YAML
    with the declared default, and the YAML has nothing else."""
    node = yaml.safe_load((CONF_DIR / "codec" / f"{name}.yaml").read_text())
    cls = CODECS.get(node.pop("name"))
    declared_defaults = {k: v for k, v in defaults(declared(cls.__init__)).items() if k not in cls.training_options}
    assert {k: v for k, v in node.items() if k not in cls.training_options} == declared_defaults


def test_every_registered_codec_declares_checkable_options():
    for name in list_codecs():
        for option in declared(CODECS.get(name).__init__):
            assert option.kinds, f"{name}: codec.{option.name} has no plain-data type annotation"


def test_link_and_profiles_are_declared_and_checked_however_built():
    from splitbench.channel import Link, link_from_config
    from splitbench.compute import ComputeProfile, profile_from_config

    with pytest.raises(ConfigError, match="bandwidth.mtu must be an integer >= 53, got 40"):
        Link("x", mbps=1, rtt_ms=0, mtu=40)
    with pytest.raises(ConfigError, match=r"bandwidth has no option 'bandwidth.rtt' \(did you mean 'bandwidth.rtt_ms'"):
        link_from_config({"name": "x", "mbps": 1, "rtt": 3})
    with pytest.raises(ConfigError, match="server.gflops for gpu must be a number > 0 or null, got 0"):
        profile_from_config({"name": "gpu", "gflops": 0}, "server")
    with pytest.raises(ConfigError, match="profile.scale for p must be a number > 0"):
        ComputeProfile("p", scale=-1)


def test_dataset_and_model_options_are_checked_against_their_factories():
    from splitbench.data import build_dataset
    from splitbench.models import build_model

    with pytest.raises(ConfigError, match=r"data 'fashion_mnist' has no option 'data.splt' \(did you mean 'data.split'"):
        build_dataset({"name": "fashion_mnist", "splt": "test"})
    with pytest.raises(ConfigError, match=r"model 'vit_fmnist' has no option 'model.checkpont'"):
        build_model({"name": "vit_fmnist", "checkpont": None})
