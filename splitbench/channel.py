"""The channel: what it costs to move a payload from device to edge server.

A link is an uplink rate, a round-trip time and the per-packet protocol overhead of TCP/IPv4 over
Ethernet-like framing. Transmission time counts every byte the bottleneck serialises:

    wire_bytes(n) = n + app_header + ceil((n + app_header) / mss) * per_packet_overhead
    t_transmit    = 8 * wire_bytes / rate

with mss = mtu - 52 (IPv4 20 + TCP 20 + TCP timestamps 12) and per-packet overhead 66 bytes
(those 52 + the 14-byte Ethernet header that Linux ``tc`` shapers count). ``app_header`` is the
frame header of splitbench's live protocol. A sample answered on the device sends nothing: 0 s.
Assumed: a persistent connection (no handshake), no loss, no slow start; one RTT per request (the
reply is a few bytes). These are documented in conf/bandwidth/*.yaml and checked by live mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

IP_TCP_HEADER = 52
ETHERNET_HEADER = 14


@dataclass(frozen=True)
class Link:
    name: str
    mbps: float
    rtt_ms: float
    mtu: int = 1500
    per_packet_overhead: int = IP_TCP_HEADER + ETHERNET_HEADER
    app_header: int = 24

    def __post_init__(self) -> None:
        for key in ("mbps", "rtt_ms", "mtu", "per_packet_overhead", "app_header"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"bandwidth.{key} must be a number, got {value!r}")
        if self.mbps <= 0:
            raise ConfigError(f"bandwidth.mbps must be > 0, got {self.mbps!r}")
        if self.rtt_ms < 0:
            raise ConfigError(f"bandwidth.rtt_ms must be >= 0, got {self.rtt_ms!r}")
        if self.mtu <= IP_TCP_HEADER:
            raise ConfigError(f"bandwidth.mtu must be > {IP_TCP_HEADER}, got {self.mtu!r}")

    @property
    def mss(self) -> int:
        return self.mtu - IP_TCP_HEADER

    def wire_bytes(self, payload_bytes: np.ndarray | int) -> np.ndarray:
        n = np.asarray(payload_bytes, dtype=np.float64)
        framed = n + self.app_header
        packets = np.ceil(framed / self.mss)
        return np.where(n > 0, framed + packets * self.per_packet_overhead, 0.0)

    def transmit_seconds(self, payload_bytes: np.ndarray | int) -> np.ndarray:
        return 8.0 * self.wire_bytes(payload_bytes) / (self.mbps * 1e6)


def link_from_config(cfg: Any) -> Link:
    fields = {k: cfg[k] for k in ("name", "mbps", "rtt_ms", "mtu", "per_packet_overhead", "app_header")
              if k in cfg and cfg[k] is not None}
    unknown = set(cfg) - {"name", "mbps", "rtt_ms", "mtu", "per_packet_overhead", "app_header", "source"}
    if unknown:
        raise ConfigError(f"bandwidth has no option(s) {', '.join(sorted(unknown))}; valid: mbps, rtt_ms, "
                          "mtu, per_packet_overhead, app_header")
    for key in ("mbps", "rtt_ms"):
        if key not in fields:
            raise ConfigError(f"bandwidth.{key} is required")
        if isinstance(fields[key], str):
            try:
                fields[key] = float(fields[key])
            except ValueError:
                raise ConfigError(f"bandwidth.{key} must be a number, got {fields[key]!r}") from None
    return Link(**fields)
