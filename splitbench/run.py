"""The runner: one (codec, rate point, link, profiles) per Hydra job.

    data -> device half + codec encoder -> bytes -> channel -> codec decoder + server half -> metrics

Records are measured once per (codec config, model, data) and cached (splitbench.measure); each
job prices them under its link and profiles (splitbench.latency), writes ``results.csv``
atomically into its run directory and prints a compact table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .channel import link_from_config
from .codecs import create_codec
from .compute import profile_from_config
from .data import build_dataset, check_fits, dataset_identity
from .errors import ConfigError
from .latency import price
from .measure import RecordStore, measured_records
from .metrics import summarize
from .models import TaskModel, build_model
from .results import RESULTS_FILE, format_table, write_results

_MODELS: dict[str, TaskModel] = {}
_DATASETS: dict[str, Any] = {}
_STORES: dict[bool, RecordStore] = {}


def _key(cfg: Any) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


def load_task_model(model_cfg: dict[str, Any]) -> TaskModel:
    """Built once per process: a multirun on the basic launcher shares it across jobs."""
    key = _key(model_cfg)
    if key not in _MODELS:
        _MODELS[key] = build_model(model_cfg)
    return _MODELS[key]


def load_dataset(data_cfg: dict[str, Any], task: TaskModel | None = None) -> Any:
    """Built once per (data config, task model); checked against the model's input before use."""
    key = _key([data_cfg, task.name if task else None, task.input_size if task else None])
    if key not in _DATASETS:
        dataset = build_dataset(data_cfg, model=task)
        if task is not None:
            check_fits(dataset, data_cfg["name"], task)
        _DATASETS[key] = dataset
    return _DATASETS[key]


def _codec_options(codec_cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if "name" not in codec_cfg:
        raise ConfigError("codec.name is missing")
    options = {k: v for k, v in codec_cfg.items() if k != "name"}
    return codec_cfg["name"], options


def _workers_setting(cfg: DictConfig) -> int | str:
    """measure.workers; ``auto`` means 1 under the joblib launcher, whose jobs already fill the cores."""
    workers = cfg.measure.get("workers", "auto")
    if workers in (None, "auto"):
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized() and "joblib" in str(HydraConfig.get().launcher.get("_target_", "")):
                return 1
        except Exception:
            pass
        return "auto"
    return workers


def _timing_columns(cond: dict[str, Any]) -> dict[str, Any]:
    """The conditions the row's stage times were measured under (see splitbench.conditions)."""
    return {"timing_contended": bool(cond.get("contended", False)), "timing_threads": cond.get("threads"),
            "timing_workers": cond.get("workers"), "timing_cores": cond.get("cores"),
            "timing_load": f"{cond.get('load_before')}/{cond.get('load_after')}" if cond else None,
            "timing_cpu": cond.get("cpu")}


def execute(cfg: DictConfig, run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Run one job; returns [codec row, reference row (if any)] and writes results.csv."""
    threads = cfg.measure.get("threads", 1)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"measure.threads must be a positive number or null, got {threads!r}")
    if threads:
        torch.set_num_threads(int(threads))
    if cfg.mode == "live":  # the same row, plus latency measured over a real link (splitbench.live)
        from .live.runner import execute_live

        return execute_live(cfg, run_dir)
    if cfg.mode != "model":
        raise ConfigError(f"unknown mode {cfg.mode!r}; valid modes: model, live")
    if run_dir is not None and cfg.results.resume and (run_dir / RESULTS_FILE).exists():
        print(f"splitbench: {run_dir / RESULTS_FILE} exists, skipping (results.resume=true)")
        return pd.read_csv(run_dir / RESULTS_FILE).to_dict("records")

    # Validate everything cheap before any model runs.
    link = link_from_config(OmegaConf.to_container(cfg.bandwidth, resolve=True))
    device = profile_from_config(OmegaConf.to_container(cfg.device, resolve=True), "device")
    server = profile_from_config(OmegaConf.to_container(cfg.server, resolve=True), "server")
    name, options = _codec_options(OmegaConf.to_container(cfg.codec, resolve=True))
    codec = create_codec(name, **options)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)

    task = load_task_model(model_cfg)
    dataset = load_dataset(data_cfg, task)
    data_cfg = {**data_cfg, **dataset_identity(dataset)}  # the record cache sees a changed folder
    store = _STORES.setdefault(bool(cfg.measure.cache), RecordStore(enabled=bool(cfg.measure.cache)))
    bs, progress = int(cfg.measure.batch_size), bool(cfg.measure.progress)
    clock = str(cfg.measure.get("clock", "wall"))
    if bs < 1:
        raise ConfigError(f"measure.batch_size must be >= 1, got {bs}")

    workers = _workers_setting(cfg)
    how = dict(clock=clock, threads=threads, workers=workers, model_cfg=model_cfg)

    reference = ref_codec = ref_key = None
    if cfg.measure.reference:
        ref_codec = create_codec(cfg.measure.reference)
        reference, ref_key, _ = measured_records(ref_codec, task, dataset, data_cfg, bs, store, progress, **how)
    if ref_codec is not None and ref_codec.name == codec.name and ref_codec.options() == codec.options():
        records, key = reference, ref_key
    else:
        records, key, _ = measured_records(codec, task, dataset, data_cfg, bs, store, progress, **how)

    c, h, w = task.input_size
    common = {
        "data": data_cfg["name"], "data_options": json.dumps(data_cfg, sort_keys=True, default=str),
        "model": task.name, "bandwidth": link.name, "mbps": link.mbps,
        "rtt_ms": link.rtt_ms, "device": device.name, "server": server.name,
        "timing": ("batch1" if bs == 1 else f"amortised/{bs}") + ("" if clock == "wall" else f"/{clock}"),
        "splitbench_version": __version__,
    }

    def row_for(the_codec: Any, recs: pd.DataFrame, rec_key: str | None) -> dict[str, Any]:
        metrics = summarize(recs, price(recs, link, device, server), reference=reference, pixels=h * w,
                            extra_columns=the_codec.extra_columns)
        return {"codec": the_codec.name, "series": the_codec.series(), "rate_point": the_codec.rate_point(),
                **common, **metrics, **_timing_columns(store.conditions(rec_key) if rec_key else {}),
                "codec_options": json.dumps(the_codec.options(), sort_keys=True), "records_key": rec_key}

    rows = [row_for(codec, records, key)]
    if reference is not None and ref_codec is not None and records is not reference:
        rows.append(row_for(ref_codec, reference, ref_key))
    if run_dir is not None:
        write_results(rows[:1], run_dir)
    return rows


def print_summary(rows: list[dict[str, Any]], run_dir: Path | None, seconds: float) -> None:
    r = rows[0]
    print(f"\nsplitbench {r['data']} / {r['model']} / link {r['bandwidth']} ({r['mbps']} Mbit/s, RTT "
          f"{r['rtt_ms']} ms) / device {r['device']} / server {r['server']} / n={r['n']}")
    print(format_table(rows))
    if len(rows) > 1:
        print(f"({rows[1]['codec']} is the reference row; agreement = same top-1 as {rows[1]['codec']})")
    where = f"results: {run_dir / RESULTS_FILE}" if run_dir else ""
    print(f"{where}  [{seconds:.1f} s]")
