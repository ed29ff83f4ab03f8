"""Latency arithmetic against hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from splitbench import ConfigError
from splitbench.channel import Link, link_from_config
from splitbench.compute import ComputeProfile
from splitbench.latency import price


def test_wire_bytes_single_packet():
    link = Link("t", mbps=10, rtt_ms=10)  # mss 1448, 66 B per packet, 24 B app header
    assert link.wire_bytes(1000) == 1000 + 24 + 66
    assert link.transmit_seconds(1000) == pytest.approx(8 * 1090 / 10e6)


def test_wire_bytes_several_packets():
    link = Link("t", mbps=1, rtt_ms=0)
    # 3000 + 24 = 3024 bytes -> ceil(3024/1448) = 3 packets -> 3024 + 3*66 = 3222
    assert link.wire_bytes(3000) == 3222
    assert link.transmit_seconds(3000) == pytest.approx(8 * 3222 / 1e6)
    # exactly one full segment
    assert link.wire_bytes(1448 - 24) == 1448 + 66


def test_nothing_sent_costs_nothing():
    assert Link("t", mbps=1, rtt_ms=50).transmit_seconds(0) == 0


def test_price_hand_computed():
    records = pd.DataFrame({
        "offloaded": [True, False], "bytes": [1000, 0],
        "t_device": [0.001, 0.004], "t_encode": [0.002, 0.0], "t_decode": [0.003, 0.0],
        "t_server": [0.005, 0.0], "flops_device": [0.0, 1e6], "flops_server": [2e9, 0.0]})
    link = Link("t", mbps=10, rtt_ms=20)
    lat = price(records, link, ComputeProfile("d", scale=2.0), ComputeProfile("s", scale=0.5))
    # offloaded: 2*(1+2) ms device side + 20 ms RTT + 0.872 ms transmit + 0.5*(3+5) ms server side
    assert lat["lat_total"][0] == pytest.approx(0.006 + 0.020 + 8 * 1090 / 10e6 + 0.004)
    # answered locally: device only
    assert lat["lat_total"][1] == pytest.approx(0.008)
    # FLOPs mode: 2 GFLOP at 1000 GFLOP/s + 0.5 ms launch
    lat = price(records, link, ComputeProfile("d"), ComputeProfile("s", gflops=1000, launch_ms=0.5))
    assert lat["lat_server"][0] == pytest.approx(0.002 + 0.0005)
    assert lat["lat_server"][1] == 0


@pytest.mark.parametrize("cfg,match", [
    ({"name": "x", "mbps": "fast", "rtt_ms": 1}, "bandwidth.mbps must be a number"),
    ({"name": "x", "mbps": -1, "rtt_ms": 1}, "bandwidth.mbps must be a number > 0"),
    ({"name": "x", "mbps": 1, "rtt_ms": -5}, "rtt_ms must be a number >= 0"),
    ({"name": "x", "mbps": 1, "rtt_ms": 1, "speed": 3}, "no option"),
])
def test_malformed_bandwidth(cfg, match):
    with pytest.raises(ConfigError, match=match):
        link_from_config(cfg)


def test_presets_are_valid():
    from omegaconf import OmegaConf

    from splitbench.paths import CONF_DIR

    names = set()
    for path in (CONF_DIR / "bandwidth").glob("*.yaml"):
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        link = link_from_config(cfg)
        names.add(link.name)
        assert link.name == path.stem, "preset name must match its file (the option users type)"
    assert {"0.1mbps", "1mbps", "5mbps", "10mbps", "25mbps", "100mbps", "lte", "5g", "wifi", "nbiot"} <= names
