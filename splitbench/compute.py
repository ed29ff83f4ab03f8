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

from dataclasses import dataclass, fields
from typing import Annotated, Any

import numpy as np

from .options import Positive, Range, build, check, declared


@dataclass(frozen=True)
class ComputeProfile:
    """A device or server; its fields are the declared ``device.*``/``server.*`` options."""

    name: str
    scale: Annotated[float, Positive] = 1.0
    gflops: Annotated[float, Positive] | None = None
    launch_ms: Annotated[float, Range(0)] = 0.0

    def __post_init__(self) -> None:  # checked however it is built (a config or in code)
        check({f.name: getattr(self, f.name) for f in fields(self)}, declared(ComputeProfile), "profile",
              self.name)

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
    """A profile from a ``device``/``server`` config node (``source`` documents it; ``host``/``port``
    are where live mode finds the server)."""
    return build(ComputeProfile, dict(cfg), kind, cfg.get("name", ""), ignore=("source", "host", "port"))
