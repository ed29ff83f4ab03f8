"""Compute profiles: how long the device and the server take, relative to the measuring host.

Every stage is measured on this host. A profile turns those seconds into the target machine's:

* ``scale``: measured seconds x scale (1.0 = the measuring host). Applied to the coding stages
  (entropy/image coding runs on a CPU) and, without ``gflops``, to the model stages too.
* ``gflops``: if set, a model stage takes ``FLOPs / (gflops * 1e9) + launch_ms`` instead, with the
  stage's FLOPs counted by ``torch.utils.flop_counter``. ``launch_ms`` models the fixed per-call
  cost (kernel launches, synchronisation) that dominates small models on accelerators.

Each shipped profile documents where its numbers come from (conf/device, conf/server).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class ComputeProfile:
    name: str
    scale: float = 1.0
    gflops: float | None = None
    launch_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"profile {self.name!r}: scale must be a positive number, got {self.scale!r}")
        if self.gflops is not None and not (isinstance(self.gflops, (int, float)) and self.gflops > 0):
            raise ConfigError(f"profile {self.name!r}: gflops must be a positive number or null, got {self.gflops!r}")
        if not (isinstance(self.launch_ms, (int, float)) and self.launch_ms >= 0):
            raise ConfigError(f"profile {self.name!r}: launch_ms must be >= 0, got {self.launch_ms!r}")

    def model_seconds(self, measured: np.ndarray, flops: np.ndarray) -> np.ndarray:
        measured = np.asarray(measured, dtype=np.float64)
        if self.gflops is None:
            return measured * self.scale
        flops = np.asarray(flops, dtype=np.float64)
        ran = measured > 0  # a stage that did not run (not offloaded, or no model) costs nothing
        return np.where(ran, flops / (self.gflops * 1e9) + self.launch_ms / 1e3, 0.0)

    def coding_seconds(self, measured: np.ndarray) -> np.ndarray:
        return np.asarray(measured, dtype=np.float64) * self.scale


def profile_from_config(cfg: Any, kind: str) -> ComputeProfile:
    allowed = {"name", "scale", "gflops", "launch_ms", "source", "host", "port"}  # host/port: live mode
    unknown = set(cfg) - allowed
    if unknown:
        raise ConfigError(f"{kind} profile has no option(s) {', '.join(sorted(unknown))}; valid: "
                          "scale, gflops, launch_ms")
    return ComputeProfile(name=cfg["name"], scale=cfg.get("scale", 1.0), gflops=cfg.get("gflops"),
                          launch_ms=cfg.get("launch_ms", 0.0))
