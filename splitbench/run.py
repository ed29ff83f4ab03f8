"""The runner: one (codec, rate point, link, profiles) per Hydra job.

    data -> device half + codec encoder -> bytes -> channel -> codec decoder + server half -> metrics

A job is built once (splitbench.job); its records are measured once per (codec config, model,
data) and cached (splitbench.measure); the model executor here prices them under the job's link and
profiles (splitbench.latency), the live executor (splitbench.live.runner) also sends them. Each run
writes ``results.csv`` atomically into its run directory and prints a compact table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from . import __version__
from .errors import ConfigError
from .job import Job, Loaded, build_job, job_runtime, measure_settings
from .latency import price
from .measure import measured_records
from .metrics import summarize
from .results import RESULTS_FILE, format_table, write_results
from .runtime import prepare

MODES = ("model", "live")


@dataclass
class Measured:
    """What the model executor produced: the rows (codec, then reference if any) and the codec's records."""

    rows: list[dict[str, Any]]
    records: pd.DataFrame


def _workers_setting(workers: int | str | None) -> int | str:
    """measure.workers; ``auto`` means 1 under the joblib launcher, whose jobs already fill the cores."""
    if workers in (None, "auto"):
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized() and "joblib" in str(HydraConfig.get().launcher.get("_target_", "")):
                return 1
        except Exception:
            pass
        return "auto"
    return workers  # type: ignore[return-value]


def _timing_columns(cond: dict[str, Any]) -> dict[str, Any]:
    """The conditions the row's stage times were measured under (see splitbench.conditions); records
    cached before devices existed were measured on the CPU."""
    return {"timing_contended": bool(cond.get("contended", False)), "timing_threads": cond.get("threads"),
            "timing_workers": cond.get("workers"), "timing_cores": cond.get("cores"),
            "timing_load": f"{cond.get('load_before')}/{cond.get('load_after')}" if cond else None,
            "timing_cpu": cond.get("cpu"), "timing_device": cond.get("device", "cpu") if cond else None}


def run_model(job: Job) -> Measured:
    """The model executor: measure the codec's (and the reference's) records once, price them under
    the job's link and profiles; one row each."""
    m = job.measure
    how = dict(clock=m.clock, threads=m.threads, workers=_workers_setting(m.workers), model_cfg=job.model_cfg,
               pools=job.pools, loader_workers=job.loader_workers)
    args = (job.task, job.dataset, job.data_cfg, m.batch_size, job.store, m.progress)
    reference = ref_key = None
    ref_codec = job.reference
    if ref_codec is not None:
        reference, ref_key, _ = measured_records(ref_codec, *args, **how)
    if ref_codec is not None and ref_codec.name == job.codec.name and ref_codec.options() == job.codec.options():
        records, key = reference, ref_key
    else:
        records, key, _ = measured_records(job.codec, *args, **how)

    c, h, w = job.task.input_size
    link = job.link
    common = {
        "data": job.data_cfg["name"], "data_options": json.dumps(job.data_cfg, sort_keys=True, default=str),
        "model": job.task.name, "bandwidth": link.name, "mbps": link.mbps,
        "rtt_ms": link.rtt_ms, "device": job.device.name, "server": job.server.name,
        "timing": ("batch1" if m.batch_size == 1 else f"amortised/{m.batch_size}")
        + ("" if m.clock == "wall" else f"/{m.clock}"),
        "splitbench_version": __version__,
    }

    def row_for(the_codec: Any, recs: pd.DataFrame, rec_key: str | None) -> dict[str, Any]:
        metrics = summarize(recs, price(recs, link, job.device, job.server), reference=reference, pixels=h * w,
                            extra_columns=the_codec.extra_columns)
        return {"codec": the_codec.name, "series": the_codec.series(), "rate_point": the_codec.rate_point(),
                **common, **metrics, **_timing_columns(job.store.conditions(rec_key) if rec_key else {}),
                "codec_options": json.dumps(the_codec.options(), sort_keys=True), "records_key": rec_key}

    rows = [row_for(job.codec, records, key)]
    if reference is not None and ref_codec is not None and records is not reference:
        rows.append(row_for(ref_codec, reference, ref_key))
    return Measured(rows, records)


def execute(cfg: DictConfig, run_dir: Path | None = None, loaded: Loaded | None = None) -> list[dict[str, Any]]:
    """Run one job; returns [codec row, reference row (if any)] and writes results.csv.

    ``loaded``: what this process already built (pass the same one to every job of a sweep).
    """
    if cfg.mode not in MODES:
        raise ConfigError(f"unknown mode {cfg.mode!r}; valid modes: {', '.join(MODES)}")
    measure = measure_settings(cfg)  # cheap checks first: nothing is loaded yet
    _, device = job_runtime(cfg, measure)  # a GPU that is not there: one line, before anything loads
    prepare(device)
    if measure.threads:
        torch.set_num_threads(measure.threads)
    if cfg.mode == "live":
        from .live.runner import live_options

        live = live_options(cfg)
    if run_dir is not None and cfg.results.resume and (run_dir / RESULTS_FILE).exists():
        print(f"splitbench: {run_dir / RESULTS_FILE} exists, skipping (results.resume=true)")
        return pd.read_csv(run_dir / RESULTS_FILE).to_dict("records")
    own = loaded is None  # a one-off job owns what it builds, its worker pools included
    loaded = loaded if loaded is not None else Loaded()
    try:
        job = build_job(cfg, loaded)
        if cfg.mode == "live":  # the same row, plus latency measured over a real link (splitbench.live)
            from .live.runner import run_live

            return run_live(job, live, lambda: run_model(job), run_dir)
        rows = run_model(job).rows
    finally:
        if own:
            loaded.close()
    if run_dir is not None:
        write_results(rows[:1], run_dir)
    return rows


def print_summary(rows: list[dict[str, Any]], run_dir: Path | None, seconds: float) -> None:
    r = rows[0]
    on = r.get("timing_device") if isinstance(r.get("timing_device"), str) else "cpu"  # where the models ran
    print(f"\nsplitbench {r['data']} / {r['model']} / link {r['bandwidth']} ({r['mbps']} Mbit/s, RTT "
          f"{r['rtt_ms']} ms) / device {r['device']} / server {r['server']} / n={r['n']}"
          + (f" / models on {on}" if on != "cpu" else ""))
    print(format_table(rows))
    if len(rows) > 1:
        print(f"({rows[1]['codec']} is the reference row; agreement = same top-1 as {rows[1]['codec']})")
    where = f"results: {run_dir / RESULTS_FILE}" if run_dir else ""
    print(f"{where}  [{seconds:.1f} s]")
