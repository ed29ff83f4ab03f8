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

from dataclasses import dataclass, fields
from typing import Annotated, Any

import numpy as np

from .options import Positive, Range, build, check, declared

IP_TCP_HEADER = 52
ETHERNET_HEADER = 14


@dataclass(frozen=True)
class Link:
    """An uplink; its fields are the declared ``bandwidth.*`` options (splitbench.options)."""

    name: str
    mbps: Annotated[float, Positive]
    rtt_ms: Annotated[float, Range(0)]
    mtu: Annotated[int, Range(IP_TCP_HEADER + 1)] = 1500
    per_packet_overhead: Annotated[int, Range(0)] = IP_TCP_HEADER + ETHERNET_HEADER
    app_header: Annotated[int, Range(0)] = 24

    def __post_init__(self) -> None:  # checked however it is built (a config or Link(...) in code)
        check({f.name: getattr(self, f.name) for f in fields(self)}, declared(Link), "bandwidth")

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
    """A Link from a ``bandwidth`` config node (``source`` documents a preset; numeric strings are read
    as numbers, as a command line may quote them)."""
    given = dict(cfg)
    for key in ("mbps", "rtt_ms"):
        if isinstance(given.get(key), str):
            try:
                given[key] = float(given[key])
            except ValueError:
                pass  # reported by the declared check, naming the valid range
    return build(Link, given, "bandwidth", ignore=("source",))
