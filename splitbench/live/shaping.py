"""A shaped link on one Linux host: two network namespaces joined by a veth pair, ``tc tbf`` on it.

Why namespaces: the device and the server must talk over an interface that a qdisc can shape
(loopback traffic bypasses nothing we could shape fairly), and the whole link must stay inside
namespaces this process made, so no address, route or qdisc of the host is touched. Both veth
ends live in fresh namespaces (``sbl<pid>x<hex>d`` for the device, ``...s`` for the server) with
link-local addresses ``169.254.<a>.1/.2 /30`` that exist nowhere else; deleting the namespaces
deletes the veth and its qdisc.

The uplink (device -> server) is shaped with a token bucket (``tbf``) at the link rate; replies
and ACKs travel back unshaped (the latency model charges only the uplink). netem is not available
here, so the round-trip time is added by the server (an ``asyncio.sleep`` before each reply).

Token-bucket artefacts, measured here (splitbench.live.validate) and handled so:

* A tbf bucket starts full, so the first ``burst`` bytes of a payload leave at once while a real
  link serialises every byte (a 10 KB payload at 10 Mbit/s arrived 27% early). :func:`primer_size`
  gives a filler frame that exactly empties the bucket; sent right before a payload (it costs the
  payload nothing: the filler itself leaves at once) the payload is then serialised like on a
  real link. Live runs and validation do this (``live.drain_bucket``).
* With a bucket of one frame, every late timer wake-up loses tokens: at 100 Mbit/s the link ran
  11% slow. A bucket of two full frames (the default ``burst``) absorbs that jitter (0-1% off).

Processes use a namespace either by ``ip netns exec`` (a spawned server) or, within this process,
by :func:`netns` which switches only the calling thread (``setns(2)``) while a socket is made; a
socket keeps the namespace it was created in.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..errors import SplitbenchError

CLONE_NEWNET = 0x40000000
PREFIX = "sbl"
NETNS_DIR = "/run/netns"
ETH_FRAME_OVERHEAD = 14


class ShapingError(SplitbenchError):
    """The shaped link could not be built (no root, no iproute2, a failing command)."""


def shaping_unavailable() -> str | None:
    """None if this process can build a shaped link, else the reason in one line."""
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        return "link shaping needs Linux network namespaces"
    if os.geteuid() != 0:
        return "link shaping needs root (creating network namespaces and tc qdiscs needs CAP_NET_ADMIN/CAP_SYS_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"link shaping needs iproute2's `{tool}` on PATH"
    return None


def _run(argv: Sequence[str]) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ShapingError(f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise ShapingError(f"setns failed: {os.strerror(err)}")


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``name`` (sockets made here stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    except OSError:
        os.close(own)
        raise ShapingError(f"network namespace {name!r} does not exist") from None
    try:
        _libc_setns(target)
        try:
            yield
        finally:
            _libc_setns(own)
    finally:
        os.close(target)
        os.close(own)


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces this module made in processes that no longer exist (a killed run)."""
    removed = []
    if not os.path.isdir(NETNS_DIR):
        return removed
    for name in os.listdir(NETNS_DIR):
        m = re.fullmatch(rf"{PREFIX}(\d+)x[0-9a-f]+[ds]", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            removed.append(name)
    return removed


@dataclass
class ShapedLink:
    """The two namespaces and the uplink shaper; build it with :func:`shaped_link`."""

    mbps: float
    mtu: int
    burst_bytes: int
    limit_bytes: int
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}")
    subnet: int = field(default_factory=lambda: secrets.choice([a for a in range(1, 255) if a != 169]))

    @property
    def device_ns(self) -> str:
        return self.tag + "d"

    @property
    def server_ns(self) -> str:
        return self.tag + "s"

    @property
    def device_addr(self) -> str:
        return f"169.254.{self.subnet}.1"

    @property
    def server_addr(self) -> str:
        return f"169.254.{self.subnet}.2"

    @property
    def device_if(self) -> str:
        return "sbd" + self.tag[-6:]

    @property
    def server_if(self) -> str:
        return "sbs" + self.tag[-6:]

    def describe(self) -> str:
        return (f"tbf {self.mbps:g} Mbit/s, burst {self.burst_bytes} B, mtu {self.mtu} "
                f"({self.device_ns} {self.device_addr} -> {self.server_ns} {self.server_addr})")

    def build(self) -> None:
        ip = ["ip"]
        _run([*ip, "netns", "add", self.device_ns])
        _run([*ip, "netns", "add", self.server_ns])
        _run([*ip, "link", "add", self.device_if, "netns", self.device_ns, "type", "veth", "peer", "name",
              self.server_if, "netns", self.server_ns])
        for ns, dev, addr in ((self.device_ns, self.device_if, self.device_addr),
                              (self.server_ns, self.server_if, self.server_addr)):
            _run([*ip, "-n", ns, "link", "set", "lo", "up"])
            _run([*ip, "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            _run([*ip, "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up"])
            # A persistent connection keeps its window between samples (the model assumes no slow start).
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_slow_start_after_idle=0"])
        self.set_rate(self.mbps, replace=False)

    def set_rate(self, mbps: float, replace: bool = True) -> None:
        """(Re)shape the uplink: tbf at ``mbps`` on the device end's egress."""
        if not mbps > 0:
            raise ShapingError(f"link rate must be > 0 Mbit/s, got {mbps!r}")
        self.mbps = float(mbps)
        _run(["tc", "-n", self.device_ns, "qdisc", "replace" if replace else "add", "dev", self.device_if,
              "root", "tbf", "rate", f"{int(round(mbps * 1e6))}bit", "burst", str(self.burst_bytes),
              "limit", str(self.limit_bytes)])

    def qdisc(self) -> str:
        return _run(["tc", "-n", self.device_ns, "-s", "qdisc", "show", "dev", self.device_if]).strip()

    def exec_argv(self, argv: Sequence[str], side: str = "server") -> list[str]:
        """``argv`` prefixed to run inside the server (or device) namespace."""
        return ["ip", "netns", "exec", self.server_ns if side == "server" else self.device_ns, *argv]

    def teardown(self) -> None:
        for ns in (self.device_ns, self.server_ns):
            if os.path.exists(os.path.join(NETNS_DIR, ns)):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def primer_size(burst_bytes: int, mtu: int = 1500, app_header: int = 24) -> int:
    """Body size of a SINK frame whose packets use up a full ``burst_bytes`` bucket (0: none fits).

    Whole MSS-sized segments only, so the next frame starts on a segment boundary and is cut into
    packets exactly as the latency model assumes.
    """
    frames = burst_bytes // (mtu + ETH_FRAME_OVERHEAD)
    mss = mtu - 52  # IPv4 20 + TCP 20 + timestamps 12 (as splitbench.channel)
    return max(0, frames * mss - app_header)


@contextlib.contextmanager
def shaped_link(mbps: float, *, mtu: int = 1500, burst_bytes: int | None = None,
                limit_bytes: int = 4 * 1024 * 1024) -> Iterator[ShapedLink]:
    """Build the namespaces + veth + tbf, yield the link, always tear down (finally and atexit)."""
    reason = shaping_unavailable()
    if reason:
        raise ShapingError(reason)
    remove_stale_namespaces()
    link = ShapedLink(mbps=float(mbps), mtu=int(mtu), limit_bytes=int(limit_bytes),
                      burst_bytes=int(burst_bytes or 2 * (mtu + ETH_FRAME_OVERHEAD)))
    atexit.register(link.teardown)
    try:
        link.build()
        yield link
    finally:
        link.teardown()
        atexit.unregister(link.teardown)
