"""Fuzz every registered codec's decoder: no payload may hang, crash or bloat a decode.

    python -m splitbench.fuzz [--cases N] [--codecs a,b] [--seed S] [--timeout T] [--out DIR]

Each codec in the registry (new codecs are covered automatically) is built from its default
config (conf/codec/<name>.yaml, or no options) and bound to the shipped Fashion-MNIST ViT. A few
real test images are encoded, and their payloads (and every other codec's) are mutated: truncated,
bit-flipped, overwritten, spliced, extended, duplicated, replaced by garbage up to 10 MB, and, for
codecs with a checksum, re-sealed so the damage passes it. Every case runs ``decode([payload])``
then ``server_forward`` in a long-lived child process; the parent waits for each answer under a
hard wall-clock limit and SIGKILLs a child that overruns it (this works even while C++ holds the
GIL), counting a hang; a child that dies counts a crash; either way a fresh child takes over.

Outcomes per case: clean (PayloadError), accepted (decoded to logits), crash (any other
exception, a child death, or an error message that hides the codec or shows an address), hang.

Memory: before each call the child hands freed heap memory back to the system (glibc
``malloc_trim``; otherwise memory freed by earlier calls would be reused unseen), resets its peak
resident size (``5`` to /proc/self/clear_refs resets VmHWM) and reports VmHWM minus the VmRSS it
had just before: the extra resident memory of that one call at its peak. Where the reset is
unavailable it reports ru_maxrss growth instead, which only sees new peaks (an under-estimate;
the table says which was used).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import json
import math
import os
import random
import re
import resource
import select
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

MEMORY_LIMIT_MIB = 64  # per call, the bound issue #11 sets for every codec
BIG = 10 << 20  # the largest garbage payload tried
TASK_MODEL = {"name": "vit_fmnist", "checkpoint": None, "pretrained": True}
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_FRAME = struct.Struct(">I")


# -- codecs under test ------------------------------------------------------------------------------
def codec_options(name: str) -> dict[str, Any]:
    """The codec's default config (conf/codec/<name>.yaml without ``name``), or no options."""
    import yaml

    from .paths import CONF_DIR

    path = CONF_DIR / "codec" / f"{name}.yaml"
    if not path.exists():
        return {}
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg.pop("name", None)
    return cfg


def build_codec(name: str, task: Any = None) -> Any:
    """A codec with its default options, bound to the shipped Fashion-MNIST ViT."""
    from .codecs import create_codec
    from .models import build_model

    codec = create_codec(name, **codec_options(name))
    codec.bind(task if task is not None else build_model(dict(TASK_MODEL)))
    return codec


FORGED = ("frankensplit", "tofc")  # codecs whose checksum :func:`forger` can re-seal


def forger(codec: Any) -> Callable[[bytes], bytes] | None:
    """Re-seals damaged bytes so they pass the codec's checksum (tofc, frankensplit), or None."""
    if codec.name == "frankensplit":
        return lambda body: zlib.crc32(body).to_bytes(4, "big") + body
    coder = getattr(codec, "coder", None)
    if codec.name == "tofc" and coder is not None:
        def seal(body: bytes) -> bytes:
            stream = body[: len(body) // 4 * 4] or bytes(4)
            return coder._check(stream) + stream
        return seal
    return None


def seed_payloads(names: list[str], images: int = 4, task: Any = None) -> dict[str, list[bytes]]:
    """Real offloaded payloads of the first Fashion-MNIST test images, per codec (in this process)."""
    import torch

    from .data import build_dataset
    from .models import build_model

    task = task if task is not None else build_model(dict(TASK_MODEL))
    ds = build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": 64})
    out: dict[str, list[bytes]] = {}
    for name in names:
        codec = build_codec(name, task)
        out[name] = []
        for first in range(0, len(ds), 2 * images):  # more images only where some are answered locally
            batch = torch.stack([ds[i][0] for i in range(first, min(len(ds), first + 2 * images))])
            with torch.inference_mode():
                out[name] += [p.data for p in codec.encode(codec.device_forward(batch)) if p.offloaded]
            if len(out[name]) >= images or name == "local":
                break
        out[name] = out[name][:images]
    return out


# -- mutations ---------------------------------------------------------------------------------------
def _flip(rng: random.Random, data: bytes, bits: int) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    out = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(out) * 8)
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def mutations(rng: random.Random, own: list[bytes], foreign: list[bytes], count: int,
              seal: Callable[[bytes], bytes] | None = None, big: int = BIG) -> Iterator[tuple[str, bytes]]:
    """``count`` (kind, payload) cases; the real payloads themselves come first."""
    pool = own or foreign or [bytes(64)]
    made = 0
    for blob in own:
        if made < count:
            made += 1
            yield "seed", blob
    kinds = ["truncate", "bitflip", "bitflip", "overwrite", "insert", "delete", "trailing", "duplicate",
             "splice", "garbage", "garbage_words", "constant", "foreign", "huge"]
    if seal is not None:
        kinds += ["forged", "forged", "forged"]
    while made < count:
        kind = rng.choice(kinds)
        s = rng.choice(pool)
        if kind == "truncate":
            data = s[:rng.randrange(len(s))] if s else b""
        elif kind == "bitflip":
            data = _flip(rng, s, rng.choice([1, 1, 1, 2, 3, 8]))
        elif kind == "overwrite":
            out = bytearray(s or b"\0")
            for _ in range(rng.randint(1, 4)):
                out[rng.randrange(len(out))] = rng.choice([0, 0xFF, rng.randrange(256)])
            data = bytes(out)
        elif kind == "insert":
            i = rng.randint(0, len(s))
            data = s[:i] + rng.randbytes(rng.randint(1, 16)) + s[i:]
        elif kind == "delete":
            i = rng.randint(0, len(s))
            data = s[:i] + s[i + rng.randint(1, 16):]
        elif kind == "trailing":
            data = s + rng.randbytes(rng.randint(1, 64))
        elif kind == "duplicate":
            data = s + s
        elif kind == "splice":
            other = rng.choice(pool + foreign)
            data = s[:rng.randint(0, len(s))] + other[rng.randint(0, len(other)):]
        elif kind == "garbage":
            data = rng.randbytes(int(2 ** rng.uniform(0, 14)))
        elif kind == "garbage_words":
            data = rng.randbytes(4 * rng.randint(1, max(2, len(s) // 2)))
        elif kind == "constant":
            data = bytes([rng.choice([0, 0xFF, 0x80])]) * rng.randint(0, 4 * max(len(s), 16))
        elif kind == "foreign":
            data = rng.choice(foreign or pool)
            if rng.random() < 0.5:
                data = _flip(rng, data, 1)
        elif kind == "huge":
            data = rng.randbytes(int(2 ** rng.uniform(14, max(15.0, math.log2(big)))))
        else:  # forged: damage that passes the checksum, so the entropy decoder really runs on it
            assert seal is not None
            body = s[4:] if len(s) > 4 else s
            body = rng.choice([_flip(rng, body, rng.randint(1, 4)), rng.randbytes(len(body) or 4),
                               body[:rng.randint(0, len(body))], body + rng.randbytes(4 * rng.randint(1, 8))])
            data = seal(body)
        made += 1
        yield kind, data


# -- the child: decodes cases on request -------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _trimmer() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0) and None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_exact(stream: Any, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError
    return data


def child_main() -> None:
    """Serve requests on stdin/stdout: ``L`` + codec name loads a codec (dropping the previous one),
    ``D`` + payload decodes one payload with it. Frames: 4-byte length, then the bytes."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the answer stream
    import torch

    from .errors import PayloadError
    from .models import build_model

    torch.set_num_threads(1)
    task = build_model(dict(TASK_MODEL))
    vmhwm = _reset_peak()
    trim = _trimmer()
    codec: Any = None
    name = ""
    warm = False

    def run(data: bytes) -> dict[str, Any]:
        trim()
        before = _status_kib("VmRSS") if vmhwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if vmhwm:
            _reset_peak()
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                logits = codec.server_forward(codec.decode([data]))
            ok = tuple(logits.shape) == (1, task.num_classes)
            outcome, message = ("accepted", "") if ok else ("crash", f"logits of shape {tuple(logits.shape)}")
        except PayloadError as err:
            message = str(err)
            bad = name.split("_")[0] not in message or ADDRESS.search(message) or "\n" in message
            outcome = "crash" if bad else "clean"
            message = ("bad error message: " if bad else "") + message
        except Exception as err:  # noqa: BLE001 - anything but PayloadError is what we are looking for
            outcome, message = "crash", f"{type(err).__name__}: {str(err)[:300]}"
        seconds = time.perf_counter() - start
        after = _status_kib("VmHWM") if vmhwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"outcome": outcome, "message": message[:300], "seconds": seconds,
                "peak_kib": max(0, after - before), "memory": "VmHWM" if vmhwm else "ru_maxrss"}

    stdin = sys.stdin.buffer
    out.write(_frame(b'{"ready": true}'))
    while True:
        try:
            (length,) = _FRAME.unpack(_read_exact(stdin, 4))
            request = _read_exact(stdin, length)
        except EOFError:
            return
        op, data = request[:1], request[1:]
        if op == b"L":
            codec = None
            name = data.decode()
            codec = build_codec(name, task)
            warm = True
            out.write(_frame(json.dumps({"max_payload_bytes": codec.max_payload_bytes()}).encode()))
            continue
        if warm:  # a codec's first call allocates lazily (thread pools, caches): run it twice, report the second
            run(data)
            warm = False
        out.write(_frame(json.dumps(run(data)).encode()))


def _frame(data: bytes) -> bytes:
    return _FRAME.pack(len(data)) + data


# -- the parent: runs cases through a child under a deadline ------------------------------------------
class Child:
    """One decoding child process; ``ask`` returns its answer, or None if it overran or died."""

    def __init__(self, start_timeout: float = 600.0) -> None:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "splitbench.fuzz", "--child"], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        if self._answer(start_timeout) is None:
            raise RuntimeError(f"the fuzz child did not start: {self.stderr_tail()}")
        self.codec = ""
        self.max_payload_bytes = 0

    def load(self, name: str, timeout: float = 600.0) -> None:
        """Build and bind ``name`` in the child (slow: not under the per-case deadline)."""
        answer = self._request(b"L" + name.encode(), timeout)
        if answer is None:
            raise RuntimeError(f"the fuzz child could not load codec {name}: {self.stderr_tail()}")
        self.codec, self.max_payload_bytes = name, int(answer["max_payload_bytes"])

    def ask(self, data: bytes, timeout: float) -> dict[str, Any] | None:
        return self._request(b"D" + data, timeout)

    def _request(self, body: bytes, timeout: float) -> dict[str, Any] | None:
        try:
            self.proc.stdin.write(_frame(body))  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except OSError:
            return None
        return self._answer(timeout)

    def _answer(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        need = 4
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, need - len(buf))
            if not chunk:
                return None
            buf += chunk
            if need == 4 and len(buf) == 4:
                need += _FRAME.unpack(buf)[0]
        return json.loads(buf[4:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace").strip()[-300:]

    def close(self) -> None:
        """End the child; SIGKILL stops it even inside a C++ loop that holds the GIL."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        self.log.close()


@dataclass
class Stats:
    """One codec's fuzz figures."""

    codec: str
    tried: int = 0
    clean: int = 0
    accepted: int = 0
    crashes: int = 0
    hangs: int = 0
    peak_mib: float = 0.0
    max_ms: float = 0.0
    memory: str = "VmHWM"
    max_payload_bytes: int = 0
    failures: list[str] = field(default_factory=list)

    def record(self, kind: str, data: bytes, answer: dict[str, Any] | None, hung: bool) -> None:
        self.tried += 1
        if answer is None:
            self.hangs += hung
            self.crashes += not hung
            self.failures.append(f"{'hang' if hung else 'child died'} on {kind} ({len(data)} bytes): "
                                 f"{data[:32].hex()}{'...' if len(data) > 32 else ''}")
            return
        outcome = answer["outcome"]
        self.clean += outcome == "clean"
        self.accepted += outcome == "accepted"
        self.crashes += outcome == "crash"
        if outcome == "crash":
            self.failures.append(f"{answer['message']} on {kind} ({len(data)} bytes): {data[:32].hex()}")
        self.peak_mib = max(self.peak_mib, answer["peak_kib"] / 1024)
        self.max_ms = max(self.max_ms, answer["seconds"] * 1000)
        self.memory = answer["memory"]

    @property
    def ok(self) -> bool:
        return not (self.crashes or self.hangs) and self.peak_mib <= MEMORY_LIMIT_MIB


def fuzz_codec(name: str, cases: int, seeds: dict[str, list[bytes]], seed: int = 0, timeout: float = 10.0,
               big: int = BIG, seal: Callable[[bytes], bytes] | None = None, child: Child | None = None,
               max_restarts: int = 20) -> tuple[Stats, Child | None]:
    """Run ``cases`` mutated payloads through a child decoding ``name``; a child that overruns the
    deadline or dies is killed and replaced. Pass a running ``child`` to reuse it across codecs;
    returns the figures and the child still running (None if none is)."""
    rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))
    foreign = [b for other, blobs in sorted(seeds.items()) if other != name for b in blobs]
    stats = Stats(name)
    child = child or Child()
    child.load(name)
    stats.max_payload_bytes = child.max_payload_bytes
    restarts = 0
    for kind, data in mutations(rng, seeds.get(name, []), foreign, cases, seal, big):
        started = time.monotonic()
        answer = child.ask(data, timeout)
        if answer is not None:
            stats.record(kind, data, answer, False)
            continue
        hung = child.alive() and time.monotonic() - started >= timeout
        if not hung:
            stats.failures.append(f"child stderr: {child.stderr_tail()}")
        stats.record(kind, data, None, hung)
        child.close()
        restarts += 1
        if restarts > max_restarts:
            stats.failures.append(f"stopped after {max_restarts} restarts")
            return stats, None
        child = Child()
        child.load(name)
    return stats, child


# -- the command -----------------------------------------------------------------------------------
COLUMNS = ["codec", "tried", "clean errors", "accepted", "crashes", "hangs", "peak MiB/call", "max ms/call",
           "max payload B"]


def rows(all_stats: list[Stats]) -> list[list[str]]:
    return [[s.codec, str(s.tried), str(s.clean), str(s.accepted), str(s.crashes), str(s.hangs),
             f"{s.peak_mib:.1f}", f"{s.max_ms:.0f}", str(s.max_payload_bytes)] for s in all_stats]


def markdown(all_stats: list[Stats]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows(all_stats)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitbench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="mutated payloads per codec (default 2000)")
    parser.add_argument("--codecs", default="", help="comma-separated codec names (default: every registered codec)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the mutations")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one decode may take before it is a hang")
    parser.add_argument("--out", default="", help="directory for fuzz.csv and fuzz.md (e.g. results/fuzz)")
    parser.add_argument("--live", type=int, default=0, metavar="FRAMES",
                        help="then send this many hostile frames to a spawned edge server (splitbench.live.fuzz)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main()
        return 0
    from .codecs import list_codecs
    from .errors import ConfigError

    registered = list_codecs()
    names = [n.strip() for n in args.codecs.split(",") if n.strip()] or registered
    unknown = [n for n in names if n not in registered]
    if unknown or args.cases < 1:
        raise ConfigError(f"unknown codec(s) {', '.join(unknown)}; registered: {', '.join(registered)}" if unknown
                          else "--cases must be >= 1")
    from .models import build_model

    task = build_model(dict(TASK_MODEL))
    seeds = seed_payloads(registered, task=task)  # every codec's payloads, for the cross-codec cases
    seals = {n: forger(build_codec(n, task)) for n in names if n in FORGED}
    all_stats = []
    child = None
    for name in names:
        stats, child = fuzz_codec(name, args.cases, seeds, args.seed, args.timeout, seal=seals.get(name), child=child)
        all_stats.append(stats)
        print(f"{name}: {stats.tried} tried, {stats.clean} clean errors, {stats.accepted} accepted, "
              f"{stats.crashes} crashes, {stats.hangs} hangs, peak {stats.peak_mib:.1f} MiB/call "
              f"({stats.memory}), max {stats.max_ms:.0f} ms/call", flush=True)
        for failure in stats.failures[:5]:
            print(f"  {failure}", flush=True)
    if child is not None:
        child.close()
    print()
    print(markdown(all_stats))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "fuzz.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(rows(all_stats))
        (out / "fuzz.md").write_text(markdown(all_stats) + "\n")
    if args.live:
        from .live.fuzz import main as live_fuzz

        print()
        live_fuzz(["--frames", str(args.live), "--seed", str(args.seed),
                   *(["--out", str(Path(args.out) / "live_fuzz.md")] if args.out else [])])
    return 0 if all(s.ok for s in all_stats) else 1


if __name__ == "__main__":
    from .errors import SplitbenchError

    try:
        sys.exit(main())
    except SplitbenchError as err:
        print(f"splitbench.fuzz: error: {err}", file=sys.stderr)
        sys.exit(2)
