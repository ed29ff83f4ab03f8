"""Price measured records under a link and compute profiles: end-to-end latency per sample.

    t = device + encode + [offloaded] * (rtt + transmit + decode + server)

device/server model stages scale by the profiles (measured seconds x scale, or FLOPs over a
documented throughput); encode runs on the device, decode on the server (coding-time scale).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .channel import Link
from .compute import ComputeProfile

STAGES = ("device", "encode", "rtt", "transmit", "decode", "server")


def price(records: pd.DataFrame, link: Link, device: ComputeProfile, server: ComputeProfile) -> pd.DataFrame:
    """Per-sample latency components in seconds (columns ``lat_<stage>`` and ``lat_total``)."""
    off = records["offloaded"].to_numpy(dtype=bool)
    out = pd.DataFrame(index=records.index)
    out["lat_device"] = device.model_seconds(records["t_device"], records["flops_device"])
    out["lat_encode"] = device.coding_seconds(records["t_encode"])
    out["lat_rtt"] = np.where(off, link.rtt_ms / 1e3, 0.0)
    out["lat_transmit"] = np.where(off, link.transmit_seconds(records["bytes"].to_numpy()), 0.0)
    out["lat_decode"] = np.where(off, server.coding_seconds(records["t_decode"]), 0.0)
    out["lat_server"] = np.where(off, server.model_seconds(records["t_server"], records["flops_server"]), 0.0)
    out["lat_total"] = out[[f"lat_{s}" for s in STAGES]].sum(axis=1)
    return out
