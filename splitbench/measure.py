"""Measure once: run a codec's whole split over a dataset and keep per-sample records.

Each sample goes device_forward -> encode -> (bytes) -> decode -> server_forward, every stage timed
with a monotonic clock after a warm-up pass. The records hold real payload sizes, the entropy
model's estimate, stage times, FLOPs, prediction and label; latency for any link and compute
profile is priced from them later (splitbench.latency) without running the model again. Records
are cached on disk, keyed by everything that changes them.

The model stages run on the task model's device (``runtime.device``); on a GPU the timer
synchronises before each clock read, so a stage's time includes its queued kernels, and the cache
key names the GPU, so CPU and GPU records never mix. Entropy coding is on the CPU (the codec
protocol; checked once per measurement).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from . import __version__, conditions
from .codecs import Codec
from .errors import ConfigError, SplitbenchError
from .models import TaskModel
from .paths import cache_dir
from .records import RECORD_COLUMNS, finite_mean  # noqa: F401  (re-exported)
from .runtime import check_on_cpu, device_label, module_device, synchronizer

RECORDS_FORMAT = 2  # bump when the measurement procedure changes


CLOCKS = {
    "wall": time.perf_counter,  # what a user waits for; inflated when other processes share the CPU
    "cpu": time.process_time,   # CPU seconds of this process: robust to a busy machine (use 1 thread)
}


def records_key(codec: Codec, task: TaskModel, data_cfg: dict[str, Any], batch_size: int,
                clock: str = "wall", threads: int | None = 1) -> str:
    """Everything that changes a record. Threads change timings (not bytes or predictions), so they
    are in the key; the number of worker processes is not (sharding is byte-identical, tested). The
    device the task model is on (and with it the codec's networks) changes timings and may change
    predictions: a GPU's name is in the key (CPU keys are as they were before devices existed)."""
    device = device_label(module_device(task))
    ident = {"codec": codec.name, "options": codec.options(), "fingerprint": codec.fingerprint(),
             "model": task.name, "model_fingerprint": task.fingerprint, "data": data_cfg,
             "batch_size": batch_size, "format": RECORDS_FORMAT, "version": __version__,
             "threads": threads, **({"clock": clock} if clock != "wall" else {}),
             **({"device": device} if device != "cpu" else {})}
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _count_flops(fn: Any, arg: Any) -> tuple[Any, float]:
    with FlopCounterMode(display=False) as counter:
        out = fn(arg)
    return out, float(counter.get_total_flops())


def _timed(fn: Any, arg: Any, clock: Any = time.perf_counter, sync: Any = None) -> tuple[Any, float]:
    """``fn(arg)`` and its time on ``clock``; ``sync`` (a GPU's synchronise) runs before each clock
    read, so queued kernels of earlier stages are not counted and this stage's are."""
    if sync is not None:
        sync()
    start = clock()
    out = fn(arg)
    if sync is not None:
        sync()
    return out, clock() - start


class Measurer:
    """One process's measuring loop: binds the codec (which moves its networks to the task model's
    device), warms up on the dataset's first batch (which also counts FLOPs, so every process reports
    the same FLOPs, and checks that the codec's wire side is on the CPU), then records any range of
    samples. ``loader_workers`` > 0 reads the samples in that many DataLoader processes (a GPU
    measurement would otherwise wait for image decoding); the batches are the same."""

    def __init__(self, codec: Codec, task: TaskModel, dataset: Dataset, batch_size: int = 1,
                 clock: str = "wall", loader_workers: int = 0) -> None:
        if clock not in CLOCKS:
            raise ConfigError(f"unknown measure.clock {clock!r}; valid clocks: {', '.join(CLOCKS)}")
        if len(dataset) == 0:
            raise SplitbenchError("the dataset is empty (check data.limit and data.root)")
        self.codec, self.dataset, self.batch_size, self.tick = codec, dataset, batch_size, CLOCKS[clock]
        self.loader_workers = int(loader_workers)
        codec.bind(task)
        device = module_device(task)
        self.sync = synchronizer(device) if device.type != "cpu" else None
        with torch.inference_mode():
            images, _ = self._batch(0, min(batch_size, len(dataset)))
            feats, dev_flops = _count_flops(codec.device_forward, images)
            check_on_cpu(feats, codec.name, "device_forward")
            payloads = codec.encode(feats)
            sent = [p.data for p in payloads if p.offloaded]
            srv_flops = 0.0
            if sent:
                decoded = codec.decode(sent)
                check_on_cpu(decoded, codec.name, "decode")
                _, srv_flops = _count_flops(codec.server_forward, decoded)
        self.dev_flops = dev_flops / len(images)
        self.srv_flops = srv_flops / len(sent) if sent else 0.0

    def _batch(self, start: int, stop: int) -> Any:
        return default_collate([self.dataset[i] for i in range(start, stop)])

    def _batches(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """(first index, batch) from ``start``: read here, or by DataLoader workers (same batches)."""
        if self.loader_workers <= 0:
            for index in range(start, stop, self.batch_size):
                yield index, self._batch(index, min(index + self.batch_size, stop))
            return
        loader = DataLoader(Subset(self.dataset, range(start, stop)), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.loader_workers, collate_fn=default_collate)
        for k, batch in enumerate(loader):
            yield start + k * self.batch_size, batch

    @torch.inference_mode()
    def records(self, start: int, stop: int, on_batch: Any = None) -> list[dict[str, Any]]:
        """Records of samples ``start..stop-1``, batched from ``start`` (a multiple of batch_size)."""
        codec, tick, sync, rows = self.codec, self.tick, self.sync, []
        for index, (images, labels) in self._batches(start, stop):
            n = len(images)
            feats, t_dev = _timed(codec.device_forward, images, tick, sync)
            payloads, t_enc = _timed(codec.encode, feats, tick)  # CPU only: nothing to wait for
            if len(payloads) != n:
                raise SplitbenchError(f"codec {codec.name} returned {len(payloads)} payloads for {n} samples")
            off = [i for i, p in enumerate(payloads) if p.offloaded]
            preds = [p.local_prediction for p in payloads]
            t_dec = t_srv = 0.0
            if off:
                decoded, t_dec = _timed(codec.decode, [payloads[i].data for i in off], tick)
                logits, t_srv = _timed(codec.server_forward, decoded, tick, sync)
                logits = logits.cpu()
                for j, i in enumerate(off):
                    preds[i] = int(logits[j].argmax())
            for i, p in enumerate(payloads):
                if not p.offloaded and p.data:
                    raise SplitbenchError(f"codec {codec.name}: a payload answered locally must send no bytes")
                sent_here = p.offloaded
                row = {
                    "index": index + i, "label": int(labels[i]), "pred": int(preds[i]), "offloaded": sent_here,
                    "bytes": len(p.data), "est_bits": p.estimated_bits,  # read after the timed stages
                    "t_device": t_dev / n, "t_encode": t_enc / n,
                    "t_decode": t_dec / len(off) if sent_here else 0.0,
                    "t_server": t_srv / len(off) if sent_here else 0.0,
                    "flops_device": self.dev_flops, "flops_server": self.srv_flops if sent_here else 0.0,
                }
                row.update(p.extras)
                rows.append(row)
            if on_batch is not None:
                on_batch(n)
        return rows


def measure(codec: Codec, task: TaskModel, dataset: Dataset, batch_size: int = 1,
            progress: bool = True, clock: str = "wall", loader_workers: int = 0) -> pd.DataFrame:
    """Run ``codec`` over ``dataset`` in this process; one record per sample (RECORD_COLUMNS + extras)."""
    measurer = Measurer(codec, task, dataset, batch_size, clock, loader_workers)
    bar = tqdm(total=len(dataset), desc=f"measure {codec.name} {codec.rate_point()}".strip(), unit="img",
               disable=not progress, dynamic_ncols=True, leave=False)
    rows = measurer.records(0, len(dataset), bar.update)
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


def _write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class RecordStore:
    """Measured records, in memory for this process and on disk across processes.

    Each entry is ``<key>.csv`` (the records) plus ``<key>.json`` (the conditions they were timed
    under, written first, so a CSV always has its conditions). Timings flagged ``contended`` are
    kept (bytes and predictions do not depend on load) but not trusted for long: ``get`` treats
    them as missing whenever the host is quiet enough to measure them properly again.
    """

    def __init__(self, directory: Path | None = None, enabled: bool = True) -> None:
        self.directory = Path(directory) if directory else cache_dir() / "records"
        self.enabled = enabled
        self.memory: dict[str, tuple[pd.DataFrame, dict[str, Any]]] = {}

    def get(self, key: str, quiet: Any = None) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """(records, conditions), or None. ``quiet()``: whether a contended entry may be re-measured now."""
        if not self.enabled:
            return None
        entry = self.memory.get(key)
        if entry is None:
            path = self.directory / f"{key}.csv"
            try:
                df = pd.read_csv(path)
                cond = json.loads(path.with_suffix(".json").read_text())
            except Exception:
                return None  # missing or damaged: re-measured, never trusted
            if not set(RECORD_COLUMNS) <= set(df.columns):
                return None
            entry = (df, cond)
        if entry[1].get("contended") and quiet is not None and quiet():
            return None
        self.memory[key] = entry
        return entry

    def conditions(self, key: str) -> dict[str, Any]:
        """The measuring conditions of an entry this process has read or written ({} if none)."""
        entry = self.memory.get(key)
        return dict(entry[1]) if entry else {}

    def put(self, key: str, df: pd.DataFrame, conditions: dict[str, Any]) -> None:
        self.memory[key] = (df, conditions)
        if self.enabled:
            _write_json_atomic(conditions, self.directory / f"{key}.json")
            _write_csv_atomic(df, self.directory / f"{key}.csv")


def resolve_workers(workers: int | str | None, n_samples: int, threads: int | None,
                    device: torch.device | str = "cpu") -> int:
    """``measure.workers``: a positive number, or ``auto``/null (one per free core; 1 for small runs;
    1 on a GPU: the GPU is the shared resource there, and one process keeps its stage times honest)."""
    if workers in (None, "auto"):
        return 1 if torch.device(device).type != "cpu" else conditions.auto_workers(n_samples, threads)
    try:
        value = int(workers)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ConfigError(f"measure.workers must be a positive number or auto, got {workers!r}")
    return max(1, min(value, n_samples))


def measured_records(codec: Codec, task: TaskModel, dataset: Dataset, data_cfg: dict[str, Any],
                     batch_size: int = 1, store: RecordStore | None = None, progress: bool = True,
                     clock: str = "wall", threads: int | None = None, workers: int | str | None = 1,
                     model_cfg: dict[str, Any] | None = None,
                     pools: "shard.Pools | None" = None, loader_workers: int = 0) -> tuple[pd.DataFrame, str, bool]:
    """Records from the cache or a fresh measurement: (records, key, was_cached); their measuring
    conditions are ``store.conditions(key)``.

    ``threads``: torch intra-op threads of each measuring process (None: as set now). ``workers`` > 1
    shards the samples across processes (splitbench.shard); that needs ``model_cfg`` and a
    registered codec, so the workers can rebuild the same objects (on the task model's device).
    ``pools``: the caller's worker pools to reuse (``job.Loaded.pools``); without them the workers
    live for this call only. ``loader_workers``: data-loading processes of a single-process
    measurement (see :class:`Measurer`).
    """
    store = store if store is not None else RecordStore()  # callers running many jobs pass theirs (job.Loaded)
    threads = int(threads or torch.get_num_threads())
    device = module_device(task)
    key = records_key(codec, task, data_cfg, batch_size, clock, threads)
    n = len(dataset)
    nproc = resolve_workers(workers, n, threads, device) if model_cfg is not None else 1
    cached = store.get(key, quiet=lambda: conditions.host_is_quiet(threads, nproc))
    if cached is not None:
        codec.bind(task)
        return cached[0], key, True

    cond = conditions.begin(threads, clock, nproc, device_label(device))
    sampler = conditions.Sampler()
    bar = tqdm(total=n, desc=f"measure {codec.name} {codec.rate_point()}".strip(), unit="img",
               disable=not progress, dynamic_ncols=True, leave=False)
    seen = [0]
    own = [1]

    def on_batch(k: int) -> None:
        seen[0] += k
        if seen[0] >= 64:
            seen[0] = 0
            sampler.sample(own[0])

    try:
        if nproc == 1:
            measurer = Measurer(codec, task, dataset, batch_size, clock, loader_workers)
            sampler.sample(1)
            df = pd.DataFrame(measurer.records(0, n, lambda k: (bar.update(k), on_batch(k))))
        else:
            from . import shard

            owned = pools is None  # a one-off measurement starts and stops its own workers
            pools = pools if pools is not None else shard.Pools()
            pool = pools.get(model_cfg, data_cfg, nproc, threads, clock, batch_size, str(device))
            own[0] = 1 + pool.alive()
            measurer = Measurer(codec, task, dataset, batch_size, clock)
            sampler.sample(own[0])
            try:
                df = pool.run(codec.name, codec.options(), key, shard.chunks_for(n, nproc, batch_size),
                              lambda a, b: pd.DataFrame(measurer.records(a, b, on_batch)), bar.update)
            except BaseException:
                pools.discard(pool)
                raise
            finally:
                if owned:
                    pools.close()
    finally:
        bar.close()
    sampler.sample(own[0])
    cond = conditions.end(cond, sampler)
    if cond["contended"]:
        print(f"splitbench: warning: {codec.name} timings measured on a busy host ({cond['demand_per_core']} "
              f"runnable tasks per core); flagged contended, re-measured on a later quiet run", file=sys.stderr)
    store.put(key, df, cond)
    return df, key, False
