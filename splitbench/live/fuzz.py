"""``python -m splitbench.live.fuzz``: hostile frames against a live edge server, and what held.

    python -m splitbench.live.fuzz                       # spawns a server on 127.0.0.1, 500 frames
    python -m splitbench.live.fuzz --frames 2000 --seed 3 --codecs jpeg,elic,frankensplit
    python -m splitbench.live.fuzz --host 127.0.0.1 --port 7878 --pid 1234   # an existing server

Each case opens a fresh loopback connection, sends one malformed or mutated frame (after a valid
OPEN where the case needs a session), half-closes, and reads every reply until the server closes.
Cases: bad magic / version / type / flags, truncated headers and bodies, oversized lengths, garbage
and deep or huge JSON OPENs, options a client may not set, DATA for unopened ids, DATA over the
codec's bound, and real payloads of a few codecs with bits flipped, bytes cut, inserted or zeroed.

The table counts: clean error replies, accepted frames (a mutated payload that still decodes is a
legitimate answer), decode timeouts (the server killed a stuck worker and said so), connections closed
without a reply, hangs (nothing within the deadline), server crashes (process gone or STATS unanswered)
and the RSS of the server plus its workers before, after and at its peak. This is the edge-server side
of the hardening; splitbench.fuzz exercises the codecs' decoders directly.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import SplitbenchError
from .protocol import HEADER, HEADER_SIZE, MAGIC, MAX_JSON_BODY, VERSION, FrameType, json_body, pack_frame

OUTCOMES = ("clean_error", "accepted", "decode_timeout", "closed_no_reply", "hang", "server_crash")


@dataclass
class FuzzReport:
    frames: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in OUTCOMES})
    by_case: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    seconds: float = 0.0
    examples: dict[str, str] = field(default_factory=dict)  # first reply text per outcome, per case/outcome

    def add(self, case: str, outcome: str, text: str) -> None:
        self.frames += 1
        self.counts[outcome] += 1
        self.by_case.setdefault(case, {k: 0 for k in OUTCOMES})[outcome] += 1
        self.examples.setdefault(outcome, f"{case}: {text[:160]}")
        self.examples.setdefault(f"{case} / {outcome}", text[:160])

    def table(self) -> str:
        mb = 2**20
        lines = ["| frames tried | clean error replies | accepted | decode timeouts (worker killed) | closed, no reply "
                 "| hangs | server crashes | server+workers RSS before / after / peak (MiB) |",
                 "|---|---|---|---|---|---|---|---|",
                 f"| {self.frames} | {self.counts['clean_error']} | {self.counts['accepted']} | "
                 f"{self.counts['decode_timeout']} | {self.counts['closed_no_reply']} | {self.counts['hang']} | "
                 f"{self.counts['server_crash']} | {self.rss_before / mb:.0f} / {self.rss_after / mb:.0f} / "
                 f"{self.rss_peak / mb:.0f} |", "",
                 "| case | " + " | ".join(OUTCOMES) + " |", "|---|" + "---|" * len(OUTCOMES)]
        for case, c in sorted(self.by_case.items()):
            lines.append(f"| {case} | " + " | ".join(str(c[k]) for k in OUTCOMES) + " |")
        return "\n".join(lines)


def _header(ftype: int = FrameType.DATA, length: int = 0, *, magic: bytes = MAGIC, version: int = VERSION,
            flags: int = 0, codec_id: int = 1, sample_id: int = 0) -> bytes:
    return HEADER.pack(magic, version, ftype, flags, codec_id, sample_id, length)


def _open(codec: str, options: dict[str, Any] | None = None, codec_id: int = 1) -> bytes:
    return pack_frame(FrameType.OPEN, json_body({"codec": codec, "options": options or {}}), codec_id=codec_id)


# -- cases: each returns (setup frames, the fuzzed bytes) -----------------------------------------
Case = Callable[[random.Random], tuple[bytes, bytes]]


def _structural_cases(max_frame: int) -> dict[str, Case]:
    return {
        "random bytes": lambda r: (b"", r.randbytes(r.randint(1, 300))),
        "bad magic": lambda r: (b"", _header(magic=r.randbytes(4)) + r.randbytes(r.randint(0, 40))),
        "bad version": lambda r: (b"", _header(version=r.choice([0, 2, 255]))),
        "unknown type": lambda r: (b"", _header(ftype=r.choice([0, 6, 0x7F, 0x80, 0xFE]), length=4) + b"abcd"),
        "server-only type": lambda r: (b"", _header(ftype=r.choice([0x81, 0x82, 0x83, 0x84, 0xFF]))),
        "reserved flags": lambda r: (b"", _header(flags=r.randint(1, 0xFFFF))),
        "oversized length": lambda r: (b"", _header(length=r.randint(max_frame + 1, 2**32 - 1))),
        "truncated header": lambda r: (b"", _header()[:r.randint(1, HEADER_SIZE - 1)]),
        "truncated body": lambda r: (b"", _header(ftype=r.choice([FrameType.SINK, FrameType.OPEN]), length=5000)
                                     + r.randbytes(r.randint(0, 4999))),
        "OPEN not JSON": lambda r: (b"", pack_frame(FrameType.OPEN, r.randbytes(r.randint(1, 200)))),
        "OPEN deep nesting": lambda r: (b"", pack_frame(FrameType.OPEN, _deep(r))),
        "OPEN over 64 KiB": lambda r: (b"", _header(FrameType.OPEN, MAX_JSON_BODY + r.randint(1, 10**6))),
        "OPEN wrong shape": lambda r: (b"", pack_frame(FrameType.OPEN, r.choice([
            b"[1,2]", b"null", b'"jpeg"', b'{"codec": 5}', b'{"codec": "jpeg", "options": [1]}',
            b'{"codec": "jpeg", "rtt_ms": 1e308}', b'{"codec": "jpeg", "rtt_ms": -1}', b'{"pickle": 1}',
            b'{"codec": "nosuch"}', b'{"codec": "jpeg", "model": "resnet50"}',
            b'{"codec": "' + b"x" * 5000 + b'"}', b'{"codec": "jpeg", "options": {"quality": 1' + b"0" * 5000 + b"}}"]))),
        "OPEN server-only options": lambda r: (b"", _open(*r.choice([
            ("frankensplit", {"arch": {"channels": [2048, 2048]}}), ("elic", {"checkpoint": "/etc/passwd"}),
            ("elic", {"N": 4096, "M": 4096}), ("bmshj2018", {"train": {"steps": 10**9}}),
            ("tofc", {"train": {"steps": 10**9}}), ("jpeg", {"quality": [1] * 1000}), ("jpeg", {"quality": 1e300}),
            ("patchsel", {"edge_checkpoint": "/dev/zero"}), ("jpeg", {"qualty": 5})]))),
        "DATA unopened id": lambda r: (b"", _header(FrameType.DATA, 100, codec_id=r.randint(0, 2**32 - 1))
                                       + r.randbytes(100)),
        "DATA over codec bound": lambda r: _oversized(r.randint(60_000, 2_000_000)),
        "SINK / STATS / CLOSE bodies": lambda r: (b"", pack_frame(r.choice([FrameType.SINK, FrameType.STATS,
                                                                              FrameType.CLOSE]),
                                                                    r.randbytes(r.randint(0, 2000)))),
        "OPEN twice / too many": lambda r: (_open("jpeg"), _open("jpeg", codec_id=r.choice([1, 1, 2]))
                                            * r.randint(1, 10)),
    }


def _oversized(n: int) -> tuple[bytes, bytes]:
    """A jpeg session, then a whole DATA frame longer than any 28x28 JPEG (the server drops it unread)."""
    return _open("jpeg"), _header(FrameType.DATA, n) + bytes(n)


def _deep(r: random.Random) -> bytes:
    n = r.choice([17, 100, 10_000, 30_000])
    inner = (b"[" * n + b"]" * n) if r.random() < 0.5 else (b'{"a":' * n + b"1" + b"}" * n)
    return (b'{"codec":"jpeg","options":{"quality":' + inner + b"}}")[:MAX_JSON_BODY]


def _mutate(r: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    how = r.randrange(6)
    if how == 0 and b:      # flip a few bits
        for _ in range(r.randint(1, 8)):
            i = r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)
    elif how == 1 and len(b) > 1:  # cut
        del b[r.randrange(1, len(b)):]
    elif how == 2:          # insert random bytes
        i = r.randint(0, len(b))
        b[i:i] = r.randbytes(r.randint(1, 64))
    elif how == 3 and b:    # zero or 0xFF a run
        i = r.randrange(len(b))
        n = r.randint(1, 32)
        b[i:i + n] = bytes([r.choice([0, 255])]) * len(b[i:i + n])
    elif how == 4:          # random bytes of the same length
        b = bytearray(r.randbytes(max(1, len(b))))
    else:                   # duplicate a tail
        b += b[r.randrange(len(b)) if b else 0:]
    return bytes(b) or b"\x00"


def real_payloads(codecs: list[str], model_cfg: dict[str, Any], count: int = 4) -> dict[str, list[bytes]]:
    """Genuine payloads of ``count`` Fashion-MNIST test images per codec (the mutation seeds)."""
    import torch
    import yaml

    from ..codecs import create_codec
    from ..data import build_dataset
    from ..models import build_model
    from ..paths import CONF_DIR

    task = build_model(model_cfg)
    data_cfg = yaml.safe_load((CONF_DIR / "data" / "fashion_mnist.yaml").read_text())
    data_cfg.update(split="test", limit=count)
    ds = build_dataset(data_cfg)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    out = {}
    for name in codecs:
        codec = create_codec(name)
        codec.bind(task)
        with torch.inference_mode():
            out[name] = [p.data for p in codec.encode(codec.device_forward(images)) if p.offloaded]
    return out


# -- talking to the server ----------------------------------------------------------------------
def _exchange(address: tuple[str, int], setup: bytes, fuzzed: bytes, deadline_s: float) -> tuple[str, str]:
    """Send, half-close, read until EOF; classify the reply to the fuzzed frame."""
    try:
        sock = socket.create_connection(address, timeout=deadline_s)
    except OSError as err:
        return "server_crash", f"connect failed: {err}"
    end = time.monotonic() + deadline_s
    buf = bytearray()
    try:
        sock.sendall(setup + fuzzed)
        sock.shutdown(socket.SHUT_WR)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return "hang", f"no end of replies within {deadline_s:g} s ({len(buf)} bytes so far)"
            sock.settimeout(left)
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 1 << 20:
                break
    except socket.timeout:
        return "hang", f"no end of replies within {deadline_s:g} s ({len(buf)} bytes so far)"
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed on us mid-send: judged by what it did reply
    finally:
        sock.close()
    frames = _split(bytes(buf))
    if setup and frames and frames[0][0] == FrameType.OPENED:
        frames = frames[1:]
    if not frames:
        return "closed_no_reply", ""
    kind, body = frames[-1] if len(frames) == 1 else next(((k, b) for k, b in frames if k == FrameType.ERROR),
                                                           frames[-1])
    text = body.decode("utf-8", "replace")
    if kind == FrameType.ERROR:
        return ("decode_timeout" if "did not finish within" in text else "clean_error"), text
    return "accepted", FrameType(kind).name


def _split(buf: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i + HEADER_SIZE <= len(buf):
        _, _, ftype, _, _, _, length = HEADER.unpack(buf[i:i + HEADER_SIZE])
        out.append((ftype, buf[i + HEADER_SIZE:i + HEADER_SIZE + length]))
        i += HEADER_SIZE + length
    return out


def server_rss(address: tuple[str, int]) -> int | None:
    """Server + workers RSS from a STATS frame; None when the server does not answer (a crash)."""
    try:
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(pack_frame(FrameType.STATS))
            buf = b""
            while len(buf) < HEADER_SIZE or len(buf) < HEADER_SIZE + HEADER.unpack(buf[:HEADER_SIZE])[6]:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return None
                buf += chunk
    except OSError:
        return None
    stats = json.loads(buf[HEADER_SIZE:])
    return int(stats["rss_bytes"]) + int(stats.get("workers_rss_bytes", 0))


def fuzz(address: tuple[str, int], frames: int = 500, *, seed: int = 0, payloads: dict[str, list[bytes]] | None = None,
         deadline_s: float = 20.0, max_frame: int = 16 * 1024 * 1024, alive: Callable[[], bool] | None = None,
         probe_every: int = 25) -> FuzzReport:
    """Send ``frames`` fuzzed frames (about half mutated real payloads when ``payloads`` are given)."""
    r = random.Random(seed)
    cases = _structural_cases(max_frame)
    names = sorted(cases)
    report = FuzzReport()
    t0 = time.monotonic()
    report.rss_before = report.rss_peak = server_rss(address) or 0
    for n in range(frames):
        if payloads and r.random() < 0.5:
            codec = r.choice(sorted(payloads))
            case = f"mutated {codec} payload"
            setup = _open(codec)
            body = _mutate(r, r.choice(payloads[codec]))
            fuzzed = pack_frame(FrameType.DATA, body, codec_id=1, sample_id=n)
        else:
            case = names[n % len(names)] if n < len(names) else r.choice(names)
            setup, fuzzed = cases[case](r)
        outcome, text = _exchange(address, setup, fuzzed, deadline_s)
        if alive is not None and not alive():
            outcome, text = "server_crash", "the server process is gone"
        report.add(case, outcome, text)
        if outcome == "server_crash":
            break
        if (n + 1) % probe_every == 0 or n == frames - 1:
            rss = server_rss(address)
            if rss is None:
                report.add(case, "server_crash", "STATS unanswered")
                break
            report.rss_peak = max(report.rss_peak, rss)
    report.rss_after = server_rss(address) or 0
    report.rss_peak = max(report.rss_peak, report.rss_after)
    report.seconds = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> None:
    from ..cli import fail
    from .runner import SpawnedServer, spawn_argv

    p = argparse.ArgumentParser(prog="python -m splitbench.live.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codecs", default="jpeg,frankensplit,elic",
                   help="codecs whose real payloads are mutated (comma-separated; '' for none)")
    p.add_argument("--decode-timeout", type=float, default=3.0, help="the spawned server's --decode-timeout")
    p.add_argument("--host", help="fuzz an existing server instead of spawning one")
    p.add_argument("--port", type=int)
    p.add_argument("--pid", type=int, help="the existing server's pid (crash detection)")
    p.add_argument("--out", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    if not 1 <= args.frames <= 100_000:
        fail("--frames must be 1..100000")
    model_cfg = {"name": "vit_fmnist", "checkpoint": None, "pretrained": True}
    codecs = [c for c in args.codecs.split(",") if c]
    server = None
    try:
        payloads = real_payloads(codecs, model_cfg) if codecs else None
        if args.host is None:
            server = SpawnedServer(spawn_argv(model_cfg, "127.0.0.1",
                                              extra=["--decode-timeout", str(args.decode_timeout)]), timeout_s=300)
            address, proc = (server.host, server.port), server.proc
            alive: Callable[[], bool] | None = lambda: proc.poll() is None  # noqa: E731
        else:
            address = (args.host, args.port or 7878)
            alive = (lambda: os.path.exists(f"/proc/{args.pid}")) if args.pid else None  # noqa: E731
        report = fuzz(address, args.frames, seed=args.seed, payloads=payloads, alive=alive,
                      deadline_s=max(20.0, 3 * args.decode_timeout + 10))
    except SplitbenchError as err:
        fail(str(err))
    finally:
        if server is not None:
            server.stop()
    text = (f"# Edge-server fuzz: {args.frames} frames, seed {args.seed}, mutated payloads of "
            f"{', '.join(codecs) or 'none'} ({report.seconds:.0f} s)\n\n{report.table()}\n\nFirst reply per outcome, then per case:\n"
            + "\n".join(f"- {k}: {v}" for k, v in report.examples.items()))
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
