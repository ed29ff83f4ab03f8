"""``python -m splitbench mode=live ...``: the device half runs here, every payload crosses a real link.

The job first does what model mode does (measure records once, price them with the latency model:
the "model" columns of the row), then runs the codec again sample by sample against a live edge
server and adds measured columns: ``live_latency_mean_ms`` / ``_p50_ms`` / ``_p95_ms`` (device +
encode + request until the answer is in), errors, the live accuracy and how often the live answer
equals the model-mode answer. Per-sample live timings go to ``live_records.csv`` beside results.csv.

Where the server is (``live:`` in conf/config.yaml):

* default: connect to ``server.host:server.port`` (start it with ``python -m splitbench.serve``);
* ``live.spawn=true``: start a local server for this run on 127.0.0.1 (unshaped);
* ``live.shape=true``: build a shaped link (splitbench.live.shaping: two namespaces, veth, tbf at
  ``bandwidth.mbps``), start the server in its namespace and add ``bandwidth.rtt_ms`` at the
  server. Needs root; without it the run says so and goes on unshaped on localhost.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ..channel import Link
from ..errors import ConfigError
from ..job import Job
from ..latency import price
from ..paths import REPO_ROOT
from ..results import write_results
from .client import LiveClient, LiveError
from .protocol import HEADER_SIZE, RemoteError
from .shaping import primer_size, shaped_link, shaping_unavailable

LIVE_RECORDS = "live_records.csv"
DEFAULTS: dict[str, Any] = {"spawn": False, "shape": False, "add_rtt": None, "drain_bucket": True,
                            "warmup": 3, "timeout_s": 120.0}


@dataclass
class Endpoint:
    host: str
    port: int
    netns: str | None
    description: str
    primer: int
    rtt_ms: float
    refill_s: float = 0.0  # shaped link: time for an emptied token bucket to fill up again


def live_options(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.live`` merged over the defaults, each value checked."""
    given = OmegaConf.to_container(cfg.live, resolve=True) if "live" in cfg and cfg.live is not None else {}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"live has no option(s) {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join('live.' + k for k in DEFAULTS)}")
    opts = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None or k == "add_rtt"}}
    for key in ("spawn", "shape", "drain_bucket"):
        if not isinstance(opts[key], bool):
            raise ConfigError(f"live.{key} must be true or false, got {opts[key]!r}")
    if opts["add_rtt"] is not None and not isinstance(opts["add_rtt"], bool):
        raise ConfigError(f"live.add_rtt must be true, false or null, got {opts['add_rtt']!r}")
    if isinstance(opts["warmup"], bool) or not isinstance(opts["warmup"], int) or opts["warmup"] < 0:
        raise ConfigError(f"live.warmup must be an integer >= 0, got {opts['warmup']!r}")
    if isinstance(opts["timeout_s"], bool) or not isinstance(opts["timeout_s"], (int, float)) \
            or not opts["timeout_s"] > 0:
        raise ConfigError(f"live.timeout_s must be a number > 0, got {opts['timeout_s']!r}")
    return opts


# -- the server end --------------------------------------------------------------------------
class SpawnedServer:
    """``python -m splitbench.serve`` as a child process (optionally inside a namespace)."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=REPO_ROOT, env=env)
        self.lines: list[str] = []
        self._ready: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            line = self._ready.get(timeout=timeout_s)
        except queue.Empty:
            self.stop()
            raise LiveError(f"the spawned server did not start within {timeout_s:g} s: {self.tail()}") from None
        if not line:
            self.stop()
            raise LiveError(f"the spawned server exited: {self.tail()}")
        addr = line.split("listening on ", 1)[1].split(" ", 1)[0]
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines = (self.lines + [line.rstrip()])[-50:]
            if "listening on " in line:
                self._ready.put(line.strip())
        self._ready.put("")

    def tail(self) -> str:
        return " | ".join(self.lines[-5:]) or f"exit status {self.proc.poll()}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def spawn_argv(model_cfg: dict[str, Any] | None, host: str, threads: int = 1,
               extra: list[str] | None = None, device: str = "cpu") -> list[str]:
    """The command of a local server; ``device``: where its workers run the server half."""
    model = ["--model-json", json.dumps(model_cfg)] if model_cfg is not None else ["--model", "none"]
    return [sys.executable, "-m", "splitbench.serve", "--host", host, "--port", "0", "--threads", str(threads),
            "--device", device, "--log-level", "WARNING", *model, *(extra or [])]


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM raises SystemExit while a link or a child server exists, so `finally` tears them down."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def endpoint(cfg: DictConfig, live: dict[str, Any], link: Link, model_cfg: dict[str, Any],
             device: str = "cpu") -> Iterator[Endpoint]:
    """Where the live samples go; a server spawned here runs its server half on ``device``."""
    shape = live["shape"]
    if shape:
        reason = shaping_unavailable()
        if reason:
            print(f"splitbench: live.shape=true but {reason}; running unshaped on localhost", file=sys.stderr)
            shape = False
    add_rtt = live["add_rtt"] if live["add_rtt"] is not None else shape
    rtt = float(link.rtt_ms) if add_rtt else 0.0
    with _terminate_cleanly():
        if shape:
            with shaped_link(link.mbps, mtu=link.mtu) as sl:
                server = SpawnedServer(sl.exec_argv(spawn_argv(model_cfg, sl.server_addr, device=device)),
                                       live["timeout_s"])
                try:
                    primer = primer_size(sl.burst_bytes, link.mtu, HEADER_SIZE) if live["drain_bucket"] else 0
                    refill = 1.05 * sl.burst_bytes * 8 / (link.mbps * 1e6) + 5e-4 if primer else 0.0
                    yield Endpoint(server.host, server.port, sl.device_ns, sl.describe(), primer, rtt, refill)
                finally:
                    server.stop()
        elif live["spawn"] or live["shape"]:
            server = SpawnedServer(spawn_argv(model_cfg, "127.0.0.1", device=device), live["timeout_s"])
            try:
                yield Endpoint(server.host, server.port, None, "localhost, unshaped (spawned server)", 0, rtt)
            finally:
                server.stop()
        else:
            host, port = str(cfg.server.get("host", "127.0.0.1")), cfg.server.get("port", 7878)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"server.port must be a TCP port (1-65535), got {port!r}")
            yield Endpoint(host, port, None, f"{host}:{port}, unshaped", 0, rtt)


# -- the job -----------------------------------------------------------------------------------
def run_live(job: Job, live: dict[str, Any], run_model: Callable[[], Any],
             run_dir: Path | None = None) -> list[dict[str, Any]]:
    """The live executor: model-mode rows (``run_model()``, the model executor over the same job)
    plus measured live columns; writes results.csv and live_records.csv.

    The server is reached and the session opened before anything is measured (fail fast), and the
    job's one codec runs both the measurement and the live samples.
    """
    codec, task = job.codec, job.task
    codec.bind(task)
    with endpoint(job.cfg, live, job.link, job.model_cfg, str(job.torch_device)) as ep:
        print(f"splitbench: live link: {ep.description}; server {ep.host}:{ep.port}"
              f"{f'; +{ep.rtt_ms:g} ms RTT at the server' if ep.rtt_ms else ''}", flush=True)
        with _session(ep, live, codec, task):  # fail fast: server reachable, codec and model agree
            pass
        measured = run_model()  # measured records priced by the latency model
        records = measured.records
        with _session(ep, live, codec, task) as (client, codec_id):
            samples = _run_live(client, codec_id, codec, job.dataset, ep, live, job.measure.progress)
    predicted = price(records, job.link, job.device, job.server)["lat_total"].to_numpy() * 1e3
    samples["model_latency_ms"] = predicted[: len(samples)]
    samples["model_pred"] = records["pred"].to_numpy()[: len(samples)]
    rows = measured.rows
    row = rows[0]
    row.update(_live_columns(samples, ep))
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        samples.to_csv(Path(run_dir) / LIVE_RECORDS, index=False)
        write_results([row], run_dir)
    _print_live(row)
    return rows


@contextlib.contextmanager
def _session(ep: Endpoint, live: dict[str, Any], codec: Any, task: Any) -> Iterator[tuple[LiveClient, int]]:
    client = LiveClient(ep.host, ep.port, netns=ep.netns, timeout_s=live["timeout_s"]).connect()
    try:
        codec_id, _ = client.open(codec.name, codec.options(), model=task.name, model_fingerprint=task.fingerprint,
                                  rtt_ms=ep.rtt_ms)
        yield client, codec_id
    finally:
        client.close()


def _run_live(client: LiveClient, codec_id: int, codec: Any, dataset: Any, ep: Endpoint,
              live: dict[str, Any], progress: bool) -> pd.DataFrame:
    """Each sample: device half + encode, then the request; timed together on this host's clock."""
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        warm = iter(loader)
        for _ in range(min(live["warmup"], len(loader))):  # connection, allocator, caches
            images, _ = next(warm)
            p = codec.encode(codec.device_forward(images))[0]
            if p.offloaded:
                with contextlib.suppress(RemoteError):
                    client.infer(codec_id, 0, p.data, primer=ep.primer)
                time.sleep(ep.refill_s)
        ready_ns = 0
        for index, (images, labels) in enumerate(tqdm(loader, desc=f"live {codec.name}", disable=not progress,
                                                      leave=False, dynamic_ncols=True)):
            # The filler that empties the bucket is free only if the bucket is full: start each sample
            # on an idle link, as a real link is between samples (untimed; a wait of burst/rate at most).
            wait = ready_ns - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            t0 = time.perf_counter()
            p = codec.encode(codec.device_forward(images))[0]
            t1 = time.perf_counter()
            rec = {"index": index, "label": int(labels[0]), "offloaded": p.offloaded, "bytes": len(p.data),
                   "error": ""}
            req = up = dec = srv = 0.0
            if p.offloaded:
                try:
                    timed = client.infer(codec_id, index, p.data, primer=ep.primer)
                    pred = timed.result.pred
                    req, up = timed.seconds, timed.uplink_seconds
                    ready_ns = timed.result.recv_last_ns + int(ep.refill_s * 1e9)
                    dec, srv = timed.result.t_decode, timed.result.t_server
                except RemoteError as err:
                    pred, rec["error"] = -1, str(err)
                    if err.closing:
                        client.connect()
                        codec_id, _ = client.open(codec.name, codec.options(), model=codec.task.name,
                                                  model_fingerprint=codec.task.fingerprint, rtt_ms=ep.rtt_ms)
            else:
                pred = int(p.local_prediction)
            t2 = time.perf_counter()
            rec.update(pred=pred, t_total=t2 - t0, t_device_encode=t1 - t0, t_request=req,
                       t_uplink=up if ep.netns is not None or ep.host.startswith("127.") else np.nan,
                       t_decode=dec, t_server=srv)
            rows.append(rec)
    return pd.DataFrame(rows)


def _live_columns(samples: pd.DataFrame, ep: Endpoint) -> dict[str, Any]:
    total = samples["t_total"].to_numpy() * 1e3
    ok = samples["error"] == ""
    labelled = samples["label"] >= 0
    sent = samples[samples["offloaded"] & (samples["error"] == "")]
    model_mean = float(samples["model_latency_ms"].mean())
    live_mean = float(total.mean())
    return {
        "live_link": ep.description,
        "live_added_rtt_ms": ep.rtt_ms,
        "live_n": int(len(samples)),
        "live_errors": int((~ok).sum()),
        "live_accuracy": float((samples.loc[labelled, "pred"] == samples.loc[labelled, "label"]).mean())
        if labelled.any() else float("nan"),
        "live_same_pred_as_model": float((samples["pred"] == samples["model_pred"]).mean()),
        "live_latency_mean_ms": live_mean,
        "live_latency_p50_ms": float(np.percentile(total, 50)),
        "live_latency_p95_ms": float(np.percentile(total, 95)),
        "live_request_mean_ms": float(sent["t_request"].mean() * 1e3) if len(sent) else 0.0,
        # request time minus the server's decode + model time: link + protocol (vs lat_rtt + lat_transmit)
        "live_network_mean_ms": float((sent["t_request"] - sent["t_decode"] - sent["t_server"]).mean() * 1e3)
        if len(sent) else 0.0,
        "live_vs_model_pct": 100.0 * (live_mean - model_mean) / model_mean if model_mean > 0 else float("nan"),
    }


def _print_live(row: dict[str, Any]) -> None:
    table = pd.DataFrame([{
        "codec": row["codec"], "link (live)": row["live_link"].split(" (")[0],
        "n": row["live_n"], "errors": row["live_errors"],
        "acc % live": f"{100 * row['live_accuracy']:.2f}",
        "same pred %": f"{100 * row['live_same_pred_as_model']:.2f}",
        "live ms mean/p50/p95": f"{row['live_latency_mean_ms']:.2f}/{row['live_latency_p50_ms']:.2f}/"
                                f"{row['live_latency_p95_ms']:.2f}",
        "model ms mean/p95": f"{row['latency_mean_ms']:.2f}/{row['latency_p95_ms']:.2f}",
        "live vs model": f"{row['live_vs_model_pct']:+.1f}%",
        "net ms live/model": f"{row['live_network_mean_ms']:.2f}/"
                             f"{(row['lat_rtt_ms'] + row['lat_transmit_ms']) / max(row['offload_ratio'], 1e-9):.2f}",
    }])
    print(table.to_markdown(index=False))
