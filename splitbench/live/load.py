"""``python -m splitbench.live.load``: a bounded load test of the edge server.

N device clients (threads, one connection each) send M real payloads each, concurrently, for two
rounds after a warm-up. Reported per round: throughput, latency p50/p95, errors (target: 0), wrong
answers (the server's top-1 against the same payload decoded in this process) and the server's
RSS, which must stay flat from round to round (no per-request growth).

    python -m splitbench.live.load --clients 8 --requests 50 --codec jpeg     # spawns a local server
    python -m splitbench.live.load --host 10.0.0.2 --port 7878                 # an existing server

Payloads are encoded once up front (the device half is not what is under test). Writes
``load.csv`` and ``load.md`` under ``--out`` (default results/live).
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from ..cli import fail
from ..codecs import create_codec
from ..errors import SplitbenchError
from ..paths import CONF_DIR, REPO_ROOT
from .client import LiveClient
from .runner import SpawnedServer, spawn_argv


def _payloads(codec_name: str, options: dict[str, Any], model_cfg: dict[str, Any], count: int):
    from ..data import build_dataset
    from ..models import build_model

    task = build_model(model_cfg)
    codec = create_codec(codec_name, for_model=task.name, **options)
    codec.bind(task)
    data_cfg = yaml.safe_load((CONF_DIR / "data" / "fashion_mnist.yaml").read_text())
    data_cfg["limit"] = count
    ds = build_dataset(data_cfg)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.inference_mode():
        payloads = [p for p in codec.encode(codec.device_forward(images)) if p.offloaded]
        if not payloads:
            raise SplitbenchError(f"codec {codec_name} answered every sample on the device: nothing to send")
        expected = codec.server_forward(codec.decode([p.data for p in payloads])).argmax(1).tolist()
    return task, [p.data for p in payloads], expected


def _stats(host: str, port: int) -> dict[str, Any]:
    """Server counters over a fresh connection (an idle session-less probe would hit open_timeout_s)."""
    with LiveClient(host, port, timeout_s=30) as probe:
        return probe.stats()


def _server_rss(stats: dict[str, Any]) -> int:
    """The server process plus its compute workers."""
    return int(stats["rss_bytes"]) + int(stats.get("workers_rss_bytes", 0))


def run_round(host: str, port: int, clients: int, requests: int, payloads: list[bytes], expected: list[int],
              open_args: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """One round: ``clients`` threads x ``requests`` each; latency per request in ms."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    wrong = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        try:
            client = LiveClient(host, port, timeout_s=timeout_s).connect()
            cid, _ = client.open(**open_args)
        except Exception as err:  # counted, never raised: the test reports every failure
            errors[k].append(f"{type(err).__name__}: {err}")
            barrier.wait()
            return
        barrier.wait()
        with client:
            for j in range(requests):
                i = (k * requests + j) % len(payloads)
                try:
                    t = client.infer(cid, j, payloads[i])
                    lat[k].append(t.seconds * 1e3)
                    wrong[k] += int(t.result.pred != expected[i])
                except Exception as err:
                    errors[k].append(f"{type(err).__name__}: {err}")
                    if getattr(err, "closing", False) or client._sock is None:
                        return

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    all_lat = np.array([x for xs in lat for x in xs])
    errs = [e for es in errors for e in es]
    return {"clients": clients, "requests_each": requests, "completed": int(all_lat.size), "errors": len(errs),
            "wrong_answers": int(sum(wrong)), "wall_s": wall, "throughput_rps": all_lat.size / wall if wall else 0.0,
            "latency_p50_ms": float(np.percentile(all_lat, 50)) if all_lat.size else float("nan"),
            "latency_p95_ms": float(np.percentile(all_lat, 95)) if all_lat.size else float("nan"),
            "first_error": errs[0] if errs else ""}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m splitbench.live.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="requests per client per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--codec", default="jpeg")
    p.add_argument("--codec-options", default="{}", help="JSON object of codec options")
    p.add_argument("--model", default="vit_fmnist", help="conf/model name (client and spawned server)")
    p.add_argument("--host", help="an existing server (default: spawn one on 127.0.0.1)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "live"))
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 1 <= args.requests <= 10_000 or not 1 <= args.rounds <= 10:
        fail("bounded load only: --clients 1..64, --requests 1..10000, --rounds 1..10")
    try:
        options = json.loads(args.codec_options)
        assert isinstance(options, dict)
    except (json.JSONDecodeError, AssertionError):
        fail("--codec-options must be a JSON object, e.g. '{\"quality\": 50}'")
    model_path = CONF_DIR / "model" / f"{args.model}.yaml"
    if not model_path.exists():
        fail(f"unknown model {args.model!r}; valid models: "
             f"{', '.join(sorted(q.stem for q in (CONF_DIR / 'model').glob('*.yaml')))}")
    model_cfg = yaml.safe_load(model_path.read_text())
    try:
        report = _run(args, options, model_cfg)
    except SplitbenchError as err:
        fail(str(err))
    print(report)


def _run(args: argparse.Namespace, options: dict[str, Any], model_cfg: dict[str, Any]) -> str:
    torch.set_num_threads(1)
    task, payloads, expected = _payloads(args.codec, options, model_cfg, 64)
    server = None
    if args.host is None:
        server = SpawnedServer(spawn_argv(model_cfg, "127.0.0.1", extra=["--max-per-client", str(args.clients + 4)]),
                               timeout_s=300)
        host, port = server.host, server.port
    else:
        host, port = args.host, args.port or 7878
    open_args = {"codec": args.codec, "options": options, "model": task.name,
                 "model_fingerprint": task.fingerprint}
    rows = []
    try:
        run_round(host, port, args.clients, 5, payloads, expected, open_args)  # warm-up
        rss0 = _server_rss(_stats(host, port))
        for r in range(args.rounds):
            row = run_round(host, port, args.clients, args.requests, payloads, expected, open_args)
            stats = _stats(host, port)
            row.update(round=r + 1, codec=args.codec, bytes_mean=float(np.mean([len(x) for x in payloads])),
                       server_rss_before_mb=rss0 / 2**20, server_rss_after_mb=_server_rss(stats) / 2**20,
                       server_connections_open=stats["connections_open"] - 1)
            rows.append(row)
    finally:
        if server is not None:
            server.stop()
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "load.csv", index=False, float_format="%.4f")
    growth = df["server_rss_after_mb"].iloc[-1] - df["server_rss_after_mb"].iloc[0]
    cols = ["round", "clients", "requests_each", "completed", "errors", "wrong_answers", "throughput_rps",
            "latency_p50_ms", "latency_p95_ms", "server_rss_before_mb", "server_rss_after_mb"]
    text = "\n".join([
        "# Live server load test", "",
        f"Command: `python -m splitbench.live.load --clients {args.clients} --requests {args.requests} "
        f"--rounds {args.rounds} --codec {args.codec}`  ",
        f"Server: {'spawned on 127.0.0.1 (unshaped loopback)' if server else f'{host}:{port}'}, model "
        f"{task.name}, compute in the server's worker processes; payloads: {args.codec}{' ' + json.dumps(options) if options else ''}, mean "
        f"{df['bytes_mean'].iloc[0]:.0f} bytes.  ",
        f"Errors: {int(df['errors'].sum())}, wrong answers: {int(df['wrong_answers'].sum())}; server + workers RSS after "
        f"warm-up {df['server_rss_before_mb'].iloc[0]:.1f} MB, growth from round 1 to round {len(df)}: "
        f"{growth:+.1f} MB.", "",
        df[cols].apply(lambda c: c.map(lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)))
        .to_markdown(index=False, disable_numparse=True), "",
    ])
    (out / "load.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
