"""Measure once: run a codec's whole split over a dataset and keep per-sample records.

Each sample goes device_forward -> encode -> (bytes) -> decode -> server_forward, every stage timed
with a monotonic clock after a warm-up pass. The records hold real payload sizes, the entropy
model's estimate, stage times, FLOPs, prediction and label; latency for any link and compute
profile is priced from them later (splitbench.latency) without running the model again. Records
are cached on disk, keyed by everything that changes them.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from . import __version__
from .codecs import Codec
from .errors import ConfigError, SplitbenchError
from .models import TaskModel
from .paths import cache_dir
from .records import RECORD_COLUMNS, finite_mean  # noqa: F401  (re-exported)

RECORDS_FORMAT = 1  # bump when the measurement procedure changes


CLOCKS = {
    "wall": time.perf_counter,  # what a user waits for; inflated when other processes share the CPU
    "cpu": time.process_time,   # CPU seconds of this process: robust to a busy machine (use 1 thread)
}


def records_key(codec: Codec, task: TaskModel, data_cfg: dict[str, Any], batch_size: int,
                clock: str = "wall") -> str:
    ident = {"codec": codec.name, "options": codec.options(), "fingerprint": codec.fingerprint(),
             "model": task.name, "model_fingerprint": task.fingerprint, "data": data_cfg,
             "batch_size": batch_size, "format": RECORDS_FORMAT, "version": __version__,
             **({"clock": clock} if clock != "wall" else {})}
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _count_flops(fn: Any, arg: Any) -> tuple[Any, float]:
    with FlopCounterMode(display=False) as counter:
        out = fn(arg)
    return out, float(counter.get_total_flops())


def _timed(fn: Any, arg: Any, clock: Any = time.perf_counter) -> tuple[Any, float]:
    start = clock()
    out = fn(arg)
    return out, clock() - start


@torch.inference_mode()
def measure(codec: Codec, task: TaskModel, dataset: Dataset, batch_size: int = 1,
            progress: bool = True, clock: str = "wall") -> pd.DataFrame:
    """Run ``codec`` over ``dataset``; one record per sample (see RECORD_COLUMNS + codec extras)."""
    if clock not in CLOCKS:
        raise ConfigError(f"unknown measure.clock {clock!r}; valid clocks: {', '.join(CLOCKS)}")
    tick = CLOCKS[clock]
    codec.bind(task)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    if len(loader) == 0:
        raise SplitbenchError("the dataset is empty (check data.limit and data.root)")

    # Warm-up on the first batch (lazy initialisation, allocator, caches) and FLOP counting.
    images, _ = next(iter(loader))
    feats, dev_flops = _count_flops(codec.device_forward, images)
    payloads = codec.encode(feats)
    sent = [p.data for p in payloads if p.offloaded]
    srv_flops, n_off = 0.0, len(sent)
    if sent:
        _, srv_flops = _count_flops(codec.server_forward, codec.decode(sent))
    dev_flops_each = dev_flops / len(images)
    srv_flops_each = srv_flops / n_off if n_off else 0.0

    rows: list[dict[str, Any]] = []
    index = 0
    bar = tqdm(loader, desc=f"measure {codec.name} {codec.rate_point()}".strip(), unit="batch",
               disable=not progress, dynamic_ncols=True, leave=False)
    for images, labels in bar:
        n = len(images)
        feats, t_dev = _timed(codec.device_forward, images, tick)
        payloads, t_enc = _timed(codec.encode, feats, tick)
        if len(payloads) != n:
            raise SplitbenchError(f"codec {codec.name} returned {len(payloads)} payloads for {n} samples")
        off = [i for i, p in enumerate(payloads) if p.offloaded]
        preds = [p.local_prediction for p in payloads]
        t_dec = t_srv = 0.0
        if off:
            decoded, t_dec = _timed(codec.decode, [payloads[i].data for i in off], tick)
            logits, t_srv = _timed(codec.server_forward, decoded, tick)
            for j, i in enumerate(off):
                preds[i] = int(logits[j].argmax())
        for i, p in enumerate(payloads):
            if not p.offloaded and p.data:
                raise SplitbenchError(f"codec {codec.name}: a payload answered locally must send no bytes")
            sent_here = p.offloaded
            row = {
                "index": index + i, "label": int(labels[i]), "pred": int(preds[i]), "offloaded": sent_here,
                "bytes": len(p.data), "est_bits": float(p.estimated_bits),
                "t_device": t_dev / n, "t_encode": t_enc / n,
                "t_decode": t_dec / len(off) if sent_here else 0.0,
                "t_server": t_srv / len(off) if sent_here else 0.0,
                "flops_device": dev_flops_each, "flops_server": srv_flops_each if sent_here else 0.0,
            }
            row.update(p.extras)
            rows.append(row)
        index += n
    bar.close()
    return pd.DataFrame(rows)


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class RecordStore:
    """Measured records, in memory for this process and on disk across processes."""

    def __init__(self, directory: Path | None = None, enabled: bool = True) -> None:
        self.directory = Path(directory) if directory else cache_dir() / "records"
        self.enabled = enabled
        self.memory: dict[str, pd.DataFrame] = {}

    def get(self, key: str) -> pd.DataFrame | None:
        if not self.enabled:
            return None
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"{key}.csv"
        if path.exists():
            try:
                df = pd.read_csv(path)
            except Exception:
                return None  # a damaged cache entry is re-measured, never trusted
            if set(RECORD_COLUMNS) <= set(df.columns):
                self.memory[key] = df
                return df
        return None

    def put(self, key: str, df: pd.DataFrame) -> None:
        self.memory[key] = df
        if self.enabled:
            _write_csv_atomic(df, self.directory / f"{key}.csv")


STORE = RecordStore()


def measured_records(codec: Codec, task: TaskModel, dataset: Dataset, data_cfg: dict[str, Any],
                     batch_size: int = 1, store: RecordStore | None = None,
                     progress: bool = True, clock: str = "wall") -> tuple[pd.DataFrame, str, bool]:
    """Records from the cache or a fresh measurement. Returns (records, key, was_cached)."""
    store = store or STORE
    key = records_key(codec, task, data_cfg, batch_size, clock)
    cached = store.get(key)
    if cached is not None:
        codec.bind(task)
        return cached, key, True
    df = measure(codec, task, dataset, batch_size=batch_size, progress=progress, clock=clock)
    store.put(key, df)
    return df, key, False
