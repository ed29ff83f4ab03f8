"""Issue #11: no frame can hang, bloat or freeze the edge server (a real `python -m splitbench.serve`).

One server for the module, with short limits so each check takes seconds: 2 workers, a 2 s decode
deadline, a 1.5 s open timeout, 3 connections per address. The test-only codec ``spin``
(tests/spin_codec.py, loaded with ``--import``) blocks forever in C holding the GIL on one payload.
The last test stops the server with SIGTERM while a worker is stuck.
"""
import os
import signal
import socket
import threading
import time

import pytest
import yaml

from splitbench.live.client import LiveClient
from splitbench.live.protocol import (FLAG_CLOSING, FrameType, ProtocolError, RemoteError, json_body, pack_frame,
                                      parse_json, parse_result, recv_frame)

MODEL_CFG = {"name": "vit_fmnist", "checkpoint": None, "pretrained": True}
TESTS = os.path.dirname(os.path.abspath(__file__))
DECODE_TIMEOUT = 2.0
OPEN_TIMEOUT = 1.5
PER_CLIENT = 3
MiB = 2**20


# -- no server needed ----------------------------------------------------------------------------
def test_json_depth_is_checked_without_recursion():
    deep = b'{"codec":"jpeg","options":{"quality":' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
    with pytest.raises(ProtocolError, match="nests 10002 levels deep; at most 16"):
        parse_json(deep, "OPEN")
    tricky = b'{"codec": "a[[[[\\"[{", "options": {"x": "\\\\"}}'  # brackets inside strings do not count
    assert parse_json(tricky, "OPEN")["codec"] == 'a[[[["[{'
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        parse_json(b'{"codec": "jpeg", "options": {"quality": 1' + b"0" * 5000 + b"}}", "OPEN")
    with pytest.raises(ProtocolError, match="exceeds the maximum of 65536"):
        parse_json(b" " * 70_000, "OPEN")


def test_what_mode_live_sends_is_accepted_and_server_options_are_not():
    from splitbench.codecs import CODECS, list_codecs
    from splitbench.errors import ConfigError
    from splitbench.live.options import check_client_options
    from splitbench.paths import CONF_DIR

    for name in list_codecs():  # conf/codec/<name>.yaml less its training knobs, as codec.options() sends it
        path = CONF_DIR / "codec" / f"{name}.yaml"
        cls = CODECS.get(name)
        options = {k: v for k, v in (yaml.safe_load(path.read_text()) if path.exists() else {}).items()
                   if k != "name" and k not in cls.training_options}
        check_client_options(cls, options)
    for name, options, needle in [("frankensplit", {"arch": {"channels": [2048, 2048]}}, "codec.arch is fixed"),
                                  ("elic", {"checkpoint": "/etc/passwd"}, "codec.checkpoint is fixed"),
                                  ("bmshj2018", {"N": 4096}, "codec.N is fixed"),
                                  ("tofc", {"train": {"steps": 10**9}}, "codec.train is fixed"),
                                  ("elic", {"train": {"steps": 1}}, "codec.train is fixed"),
                                  ("jpeg", {"quality": 101}, r"codec.quality for jpeg must be an integer in \[1, 100\]"),
                                  ("jpeg", {"quality": [75]}, "must be a number"),
                                  ("frankensplit", {"lmbda": 1e300}, "must be a number")]:
        with pytest.raises(ConfigError, match=needle):
            check_client_options(CODECS.get(name), options)


# -- one real server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv():
    from splitbench.live.runner import SpawnedServer, spawn_argv

    extra = ["--workers", "2", "--decode-timeout", str(DECODE_TIMEOUT), "--open-timeout", str(OPEN_TIMEOUT),
             "--max-per-client", str(PER_CLIENT), "--max-clients", "16", "--import", "spin_codec"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
        server = SpawnedServer(spawn_argv(MODEL_CFG, "127.0.0.1", extra=extra), timeout_s=300)
    yield server
    server.stop()


def _client(srv, timeout_s=30.0):
    return LiveClient(srv.host, srv.port, timeout_s=timeout_s).connect()


def _stats(srv, source="127.0.0.2"):
    """Counters over a connection from another loopback address (so per-address caps do not apply)."""
    with socket.create_connection((srv.host, srv.port), timeout=30, source_address=(source, 0)) as s:
        s.sendall(pack_frame(FrameType.STATS))
        header, body = recv_frame(s)
    assert header.type == FrameType.STATS_REPLY, body
    return parse_json(body, "STATS")


def _settle(srv, timeout=10.0):
    """Wait until the server has let go of earlier connections (the STATS one itself is open)."""
    end = time.monotonic() + timeout
    while _stats(srv)["connections_open"] > 1:
        assert time.monotonic() < end, "connections were not released"
        time.sleep(0.05)


def _rss(stats):
    return stats["rss_bytes"] + stats["workers_rss_bytes"]


@pytest.fixture(scope="module")
def jpeg_payload(task_model, test_images):
    from splitbench import create_codec

    codec = create_codec("jpeg", quality=50)
    codec.bind(task_model)
    return codec.encode(test_images[0][:1])[0].data


def _served(srv, payload, source=None):
    """Open jpeg and get one answer, from ``source`` (a loopback address) if given."""
    s = socket.create_connection((srv.host, srv.port), timeout=30,
                                 source_address=(source, 0) if source else None)
    with s:
        s.sendall(pack_frame(FrameType.OPEN, json_body({"codec": "jpeg", "options": {"quality": 50}}), codec_id=1)
                  + pack_frame(FrameType.DATA, payload, codec_id=1, sample_id=3))
        replies = [recv_frame(s), recv_frame(s)]
    assert [h.type for h, _ in replies] == [FrameType.OPENED, FrameType.RESULT], replies
    return parse_result(replies[1][1]).pred


def test_deep_nested_open_is_a_clean_error(srv, jpeg_payload):
    body = b'{"codec":"jpeg","options":{"quality":' + b"[" * 20_000 + b"]" * 20_000 + b"}}"
    with socket.create_connection((srv.host, srv.port), timeout=30) as s:
        s.sendall(pack_frame(FrameType.OPEN, body))
        header, text = recv_frame(s)
    assert header.type == FrameType.ERROR and header.flags & FLAG_CLOSING
    assert b"nests 20002 levels deep" in text
    assert 0 <= _served(srv, jpeg_payload) < 10
    assert _stats(srv)["internal_errors"] == 0


def test_server_only_options_are_refused_before_anything_is_built(srv, jpeg_payload):
    before = _rss(_stats(srv))
    with _client(srv) as client:
        for codec, options, needle in [
                ("frankensplit", {"arch": {"channels": [2048, 2048]}}, "codec.arch is fixed by the edge server"),
                ("elic", {"checkpoint": "/etc/passwd"}, "codec.checkpoint is fixed by the edge server"),
                ("elic", {"N": 4096, "M": 4096}, "codec.M is fixed by the edge server"),
                ("jpeg", {"quality": [[1]]}, "must be a number")]:
            with pytest.raises(RemoteError, match=needle) as err:
                client.open(codec, options)
            assert not err.value.closing and "127.0.0.1" not in str(err.value)
        cid, _ = client.open("jpeg", {"quality": 50})  # the same connection goes on
        assert 0 <= client.infer(cid, 1, jpeg_payload).result.pred < 10
    # the 2048-channel network alone would have been ~432 MiB
    assert _rss(_stats(srv)) - before < 100 * MiB


def test_idle_connections_from_one_address_do_not_lock_out_another(srv, jpeg_payload):
    hogs = [_client(srv) for _ in range(PER_CLIENT)]
    try:
        for h in hogs:  # with a session each, so only the per-address cap stands in their way
            h.open("jpeg", {"quality": 50})
        with socket.create_connection((srv.host, srv.port), timeout=30) as extra:
            header, body = recv_frame(extra)
        assert header.type == FrameType.ERROR and header.flags & FLAG_CLOSING
        assert b"connections from your address" in body and b"127.0.0.1" not in body
        assert 0 <= _served(srv, jpeg_payload, source="127.0.0.2") < 10  # another client still gets in
    finally:
        for h in hogs:
            h.close()
        _settle(srv)


def test_a_connection_that_opens_nothing_is_closed_after_the_open_timeout(srv):
    with socket.create_connection((srv.host, srv.port), timeout=30) as s:
        t0 = time.monotonic()
        header, body = recv_frame(s)
        waited = time.monotonic() - t0
        assert s.recv(1) == b""
    assert header.type == FrameType.ERROR and header.flags & FLAG_CLOSING
    assert b"no codec session opened" in body and b"open_timeout_s" in body
    assert OPEN_TIMEOUT - 0.2 <= waited < OPEN_TIMEOUT + 8


def test_a_16_mib_frame_of_any_codec_leaves_rss_flat(srv, jpeg_payload):
    from splitbench.codecs import list_codecs

    big = bytes(16 * MiB)
    names = list_codecs()
    clients = [_client(srv, timeout_s=120) for _ in range(2)]  # max_sessions (8) per connection
    try:
        sessions = [(name, clients[i % 2], clients[i % 2].open(name)[0]) for i, name in enumerate(names)]
        before = peak = _rss(_stats(srv))  # after every codec is built: that memory is not the test's
        for i, (name, client, cid) in enumerate(sessions):
            with pytest.raises(RemoteError, match=f"{name} sample {i}: payload of {len(big)} bytes exceeds this "
                                                  f"codec's maximum") as err:
                client.infer(cid, i, big)
            assert not err.value.closing
            peak = max(peak, _rss(_stats(srv)))
        jpeg = next((c, cid) for name, c, cid in sessions if name == "jpeg")
        assert 0 <= jpeg[0].infer(jpeg[1], 99, jpeg_payload).result.pred < 10  # the connection goes on
    finally:
        for c in clients:
            c.close()
        _settle(srv)
    assert len(names) >= 10 and peak - before < 100 * MiB, (before / MiB, peak / MiB)


def test_a_short_fuzz_run_holds(srv):
    from splitbench.live.fuzz import fuzz, real_payloads

    report = fuzz((srv.host, srv.port), 60, seed=1, payloads=real_payloads(["jpeg", "frankensplit"], MODEL_CFG, 2),
                  alive=lambda: srv.proc.poll() is None, deadline_s=30, probe_every=20)
    assert report.frames == 60 and report.counts["hang"] == 0 and report.counts["server_crash"] == 0, report.table()
    assert report.counts["clean_error"] >= 30, report.table()
    assert report.rss_peak - report.rss_before < 100 * MiB, report.table()
    assert not [t for t in report.examples.values() if " at 0x" in t or "127.0.0.1" in t], report.examples


def test_a_spinning_decoder_is_killed_others_are_served_and_sigterm_ends_the_server(srv, jpeg_payload):
    spinner = _client(srv)
    cid, _ = spinner.open("spin")
    outcome = {}

    def stuck() -> None:
        t0 = time.monotonic()
        try:
            spinner.infer(cid, 7, b"spin")
            outcome["error"] = None
        except RemoteError as err:
            outcome["error"] = err
        outcome["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=stuck, daemon=True)
    thread.start()
    time.sleep(0.3)  # the spinning sample is in a worker now
    answered_meanwhile = 0
    with _client(srv) as other:
        other_id, _ = other.open("jpeg", {"quality": 50})
        for i in range(3):
            assert 0 <= other.infer(other_id, i, jpeg_payload).result.pred < 10
            answered_meanwhile += thread.is_alive()
    thread.join(DECODE_TIMEOUT + 30)
    assert answered_meanwhile >= 1, "another client was answered while a worker was stuck"
    err = outcome["error"]
    assert err is not None and not err.closing
    assert f"spin sample 7: decoding did not finish within {DECODE_TIMEOUT:g} s" in str(err)
    assert DECODE_TIMEOUT - 0.1 < outcome["seconds"] < DECODE_TIMEOUT + 10
    assert 0 <= spinner.infer(cid, 8, b"ok").result.pred < 10  # the session goes on
    stats = _stats(srv)
    assert stats["decode_timeouts"] >= 1 and stats["workers_killed"] >= 1 and len(stats["worker_pids"]) >= 1

    # stuck again, then SIGTERM: the server must end within seconds, workers included
    pids = _stats(srv)["worker_pids"]
    spinner.sock.sendall(pack_frame(FrameType.DATA, b"spin", codec_id=cid, sample_id=9))
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(30)
    assert time.monotonic() - t0 < 5.0
    assert srv.proc.returncode == 0
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)], "workers outlived the server"
    spinner.close(send_close=False)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False

