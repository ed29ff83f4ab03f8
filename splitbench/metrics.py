"""Turn per-sample records (and their priced latency) into one result row."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .latency import STAGES
from .records import RECORD_COLUMNS, finite_mean

if TYPE_CHECKING:  # pragma: no cover - metrics stays importable without torch
    import torch


PSNR_CAP = 100.0  # dB, for a lossless reconstruction (keeps means finite)


def psnr(a: "torch.Tensor", b: "torch.Tensor") -> float:
    """PSNR in dB of two uint8-range images (capped for identical ones)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse))


def accuracy(records: pd.DataFrame) -> float:
    labelled = records[records["label"] >= 0]
    if labelled.empty:
        return math.nan
    return float((labelled["pred"] == labelled["label"]).mean())


def agreement(records: pd.DataFrame, reference: pd.DataFrame | None) -> float:
    if reference is None:
        return math.nan
    ref = reference.set_index("index")["pred"]
    mine = records.set_index("index")["pred"]
    common = mine.index.intersection(ref.index)
    return float((mine.loc[common] == ref.loc[common]).mean()) if len(common) else math.nan


def summarize(records: pd.DataFrame, latency: pd.DataFrame, *, reference: pd.DataFrame | None,
              pixels: int, extra_columns: tuple[str, ...] = ()) -> dict[str, Any]:
    """Metrics of one (codec, rate point, link, profiles): accuracy, rate, latency, compute."""
    total_ms = latency["lat_total"].to_numpy() * 1e3
    offloaded = records["offloaded"].astype(bool)
    row: dict[str, Any] = {
        "n": len(records),
        "accuracy": accuracy(records),
        "agreement": agreement(records, reference),
        "bytes_per_image": float(records["bytes"].mean()),
        "bytes_per_offload": float(records.loc[offloaded, "bytes"].mean()) if offloaded.any() else 0.0,
        "bpp": float(records["bytes"].mean() * 8 / pixels),
        "est_bits_per_image": finite_mean(records["est_bits"]),
        "offload_ratio": float(offloaded.mean()),
        "latency_mean_ms": float(total_ms.mean()),
        "latency_p50_ms": float(np.percentile(total_ms, 50)),
        "latency_p95_ms": float(np.percentile(total_ms, 95)),
    }
    for stage in STAGES:
        row[f"lat_{stage}_ms"] = float(latency[f"lat_{stage}"].mean() * 1e3)
    row["device_mflops"] = float(records["flops_device"].mean() / 1e6)
    row["server_mflops"] = float(records["flops_server"].mean() / 1e6)
    extras = [c for c in records.columns if c not in RECORD_COLUMNS]
    for col in dict.fromkeys((*extra_columns, *extras)):
        if col in records:
            row[col] = finite_mean(records[col])
    return row
