"""``python -m splitbench.serve``: the live-mode edge server (see splitbench.live.server).

    python -m splitbench.serve                              # 127.0.0.1:7878, model vit_fmnist
    python -m splitbench.serve --host 0.0.0.0 --port 9000 --model efficientnet_lite0
    python -m splitbench.serve --model none                 # SINK-only (link validation)
    python -m splitbench.serve --device cuda                # the server half on the first GPU

Host and port default to the server profile (conf/server/<profile>.yaml, ``host``/``port``); the
model to conf/model/<name>.yaml. Clients open codec sessions by name; compute workers (``--workers``,
each loading the model once) build each codec on first use with the options the client may set
(splitbench.live.options) and decode under a deadline (``--decode-timeout``): a stuck decoder's
worker is killed and replaced. Ready when it prints ``listening on HOST:PORT`` (port 0 picks a free
one). Ctrl-C / SIGTERM stop it within seconds, killing the workers.

``--device`` (as ``runtime.device``: auto, cpu, cuda, cuda:N; default auto) is where the workers run
the task model and the codecs' server networks; entropy decoding stays on the CPU (the codec
protocol, splitbench.codecs.base). Workers are forked from a fork server that never initialises
CUDA, so each initialises its own CUDA context (splitbench.live.pool).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import yaml

from .cli import fail
from .errors import SplitbenchError
from .paths import CONF_DIR


def _profile(name: str) -> dict[str, Any]:
    path = CONF_DIR / "server" / f"{name}.yaml"
    if not path.exists():
        valid = ", ".join(sorted(p.stem for p in (CONF_DIR / "server").glob("*.yaml")))
        fail(f"unknown server profile {name!r}; valid server profiles: {valid}")
    return yaml.safe_load(path.read_text()) or {}


def _model_config(name: str, checkpoint: str | None, model_json: str | None) -> dict[str, Any] | None:
    if model_json:
        try:
            cfg = json.loads(model_json)
        except json.JSONDecodeError as err:
            fail(f"--model-json is not JSON: {err}")
        if not isinstance(cfg, dict) or "name" not in cfg:
            fail("--model-json must be a JSON object with a \"name\"")
        return cfg
    if name == "none":
        return None
    path = CONF_DIR / "model" / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.exists() else {"name": name}
    if checkpoint:
        cfg["checkpoint"] = checkpoint
    return cfg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m splitbench.serve",
                                description="The live-mode edge server: hosts the server halves of the "
                                            "registered codecs (see splitbench.live.server).")
    p.add_argument("--profile", default="host", help="server profile giving host/port defaults (conf/server/)")
    p.add_argument("--host", help="address to listen on (default: the profile's host)")
    p.add_argument("--port", type=int, help="TCP port (default: the profile's port; 0: any free port)")
    p.add_argument("--model", default="vit_fmnist",
                   help="task model: a conf/model name or a timm name; 'none' for a SINK-only server")
    p.add_argument("--checkpoint", help="model weights (default: the shipped checkpoint)")
    p.add_argument("--model-json", help="the whole model config as JSON (what mode=live passes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (decoding + the server model)")
    p.add_argument("--device", default="auto",
                   help="where workers run the server half: auto (a GPU if visible), cpu, cuda, cuda:N "
                        "(entropy decoding always runs on the CPU)")
    p.add_argument("--workers", type=int, default=2,
                   help="compute worker processes (each loads the model; one stuck sample stalls only one)")
    p.add_argument("--decode-timeout", type=float, default=5.0,
                   help="seconds one sample may take to decode + run; past it the worker is killed and replaced")
    p.add_argument("--build-timeout", type=float, default=60.0, help="seconds building a codec may take")
    p.add_argument("--worker-max-rss-mb", type=int, default=4096,
                   help="a worker above this RSS after a request is replaced")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE in every worker (registers extra codecs); repeatable")
    p.add_argument("--max-frame-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--read-timeout", type=float, default=30.0, help="seconds a started frame may stall")
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="seconds a connection with an open codec session may sit idle")
    p.add_argument("--open-timeout", type=float, default=10.0,
                   help="seconds a connection without a codec session may stay silent")
    p.add_argument("--max-clients", type=int, default=64)
    p.add_argument("--max-per-client", type=int, default=16, help="connections at once from one address")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    profile = _profile(args.profile)
    host = args.host or profile.get("host", "127.0.0.1")
    port = args.port if args.port is not None else int(profile.get("port", 7878))
    for key in ("max_frame_bytes", "max_clients", "max_per_client", "threads", "workers", "worker_max_rss_mb"):
        if getattr(args, key) < 1:
            fail(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not 0 <= port <= 65535:
        fail(f"--port must be a TCP port 0-65535 (0: any free port), got {port}")
    for key in ("read_timeout", "idle_timeout", "open_timeout", "decode_timeout", "build_timeout"):
        if not getattr(args, key) > 0:
            fail(f"--{key.replace('_', '-')} must be > 0 seconds, got {getattr(args, key)}")
    model_cfg = _model_config(args.model, args.checkpoint, args.model_json)
    from .runtime import resolve_device  # torch: only once the cheap checks passed

    try:
        args.device = str(resolve_device(args.device))
    except SplitbenchError as err:
        fail(str(err).replace("runtime.device", "--device"))
    try:
        asyncio.run(_serve(host, port, model_cfg, args))
    except SplitbenchError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot listen on {host}:{port}: {err.strerror or err}")
    except KeyboardInterrupt:
        pass


async def _serve(host: str, port: int, model_cfg: dict[str, Any] | None, args: argparse.Namespace) -> None:
    from .live.pool import PoolSettings
    from .live.server import EdgeServer, ServerLimits

    limits = ServerLimits(max_frame_bytes=args.max_frame_bytes, read_timeout_s=args.read_timeout,
                          idle_timeout_s=args.idle_timeout, open_timeout_s=args.open_timeout,
                          max_clients=args.max_clients, max_per_client=args.max_per_client)
    pool = PoolSettings(size=args.workers, threads=args.threads, decode_timeout_s=args.decode_timeout,
                        build_timeout_s=args.build_timeout, max_rss_bytes=args.worker_max_rss_mb << 20,
                        imports=list(args.imports), device=args.device)
    server = EdgeServer(model_cfg, limits, pool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(server.start(host, port))
    await asyncio.wait([starting, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # stopped while the workers were still loading
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await server.aclose()
        return
    try:
        bound_host, bound_port = starting.result()
    except BaseException:
        await server.aclose()
        raise
    model = server.model
    what = f"model {model['name']} ({model['fingerprint'][:12]}), {args.workers} workers on {args.device}" if model \
        else "no model (SINK only)"
    print(f"splitbench.serve: listening on {bound_host}:{bound_port} ({what}, pid {os.getpid()})", flush=True)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await server.aclose()
    print(f"splitbench.serve: stopped ({json.dumps({k: v for k, v in server.snapshot().items() if k != 'started'})})",
          flush=True)


if __name__ == "__main__":
    main()
