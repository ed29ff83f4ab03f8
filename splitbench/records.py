"""The per-sample record schema and its NaN-aware mean, shared by the measuring and the summarising
side; torch-free, so metrics (and anything reading result files) need not import the runner."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

RECORD_COLUMNS = ["index", "label", "pred", "offloaded", "bytes", "est_bits", "t_device", "t_encode",
                  "t_decode", "t_server", "flops_device", "flops_server"]


def finite_mean(values: pd.Series) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan
