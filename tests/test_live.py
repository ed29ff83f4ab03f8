"""Live mode: the wire format, a server that survives hostile bytes, live runs, the shaped link."""
import random
import socket
import time

import pandas as pd
import pytest
import torch

from conftest import run_cli
from splitbench.channel import Link
from splitbench.live.client import LiveClient, LiveError
from splitbench.live.protocol import (FLAG_CLOSING, HEADER, HEADER_SIZE, JSON_TYPES, MAGIC, VERSION, FrameType,
                                      ProtocolError, RemoteError, Result, json_body, pack_frame, pack_result,
                                      parse_header, parse_json, parse_result, recv_frame)
from splitbench.live.server import EdgeServer, ServerLimits, ServerThread
from splitbench.live.shaping import shaping_unavailable

NO_SHAPING = shaping_unavailable()


# -- protocol ------------------------------------------------------------------------------------
def test_header_is_what_the_latency_model_charges():
    assert HEADER_SIZE == 24 == Link(name="x", mbps=1, rtt_ms=0).app_header


@pytest.mark.parametrize("ftype", list(FrameType))
def test_frame_round_trip(ftype):
    body = b"{}" if ftype in JSON_TYPES else bytes(range(256)) * 3
    flags = FLAG_CLOSING if ftype == FrameType.ERROR else 0
    frame = pack_frame(ftype, body, codec_id=7, sample_id=2**40 + 3, flags=flags)
    header = parse_header(frame[:HEADER_SIZE])
    assert (header.type, header.flags, header.codec_id, header.sample_id, header.length) == \
        (ftype, flags, 7, 2**40 + 3, len(body))
    assert frame[HEADER_SIZE:] == body


def test_result_and_json_bodies_round_trip():
    r = Result(pred=3, t_decode=0.25, t_server=1.5, recv_first_ns=10**18, recv_last_ns=10**18 + 7)
    assert parse_result(pack_result(r)) == r
    assert parse_json(json_body({"codec": "jpeg", "options": {"quality": 5}}), "OPEN")["options"] == {"quality": 5}


def _header(magic=MAGIC, version=VERSION, ftype=FrameType.DATA, flags=0, length=0):
    return HEADER.pack(magic, version, int(ftype), flags, 1, 0, length)


@pytest.mark.parametrize("raw,needle", [
    (_header(magic=b"HTTP"), "bad magic"),
    (_header(version=9), "unsupported protocol version 9"),
    (_header(ftype=0x42), "unknown frame type 0x42"),
    (_header(length=1 << 30), "exceeds the maximum"),
    (_header(ftype=FrameType.OPEN, length=1 << 20), "exceeds the maximum of 65536"),
    (_header(flags=1), "reserved flags"),
    (_header()[:10], "truncated header"),
])
def test_bad_headers_are_protocol_errors(raw, needle):
    with pytest.raises(ProtocolError, match=needle):
        parse_header(raw, max_frame_bytes=1 << 20)


# -- the server against good and hostile clients ----------------------------------------------------
MODEL_CFG = {"name": "vit_fmnist", "checkpoint": None, "pretrained": True}


@pytest.fixture(scope="module")
def server():
    limits = ServerLimits(read_timeout_s=0.5, idle_timeout_s=30, max_frame_bytes=1 << 20, max_clients=4)
    with ServerThread(EdgeServer(MODEL_CFG, limits)) as srv:
        yield srv


def _jpeg_payload(task_model, images, i=0):
    from splitbench import create_codec

    codec = create_codec("jpeg", quality=50)
    codec.bind(task_model)
    with torch.inference_mode():
        data = codec.encode(images[i:i + 1])[0].data
        pred = int(codec.server_forward(codec.decode([data])).argmax())
    return data, pred


def _good_client_is_served(srv, task_model, test_images):
    data, pred = _jpeg_payload(task_model, test_images[0])
    with LiveClient(*srv.address, timeout_s=10) as client:
        cid, info = client.open("jpeg", {"quality": 50}, model=task_model.name,
                                model_fingerprint=task_model.fingerprint)
        assert info["rate_point"] == "q=50"
        timed = client.infer(cid, 5, data)
        assert timed.result.pred == pred and timed.seconds > 0


def test_live_inference_matches_local(server, task_model, test_images):
    _good_client_is_served(server, task_model, test_images)


def _raw_exchange(address, data, half_close=True, wait=0.0):
    """Send raw bytes; return the ERROR reply (or None if the server reset) and whether it then closed."""
    s = socket.create_connection(address, timeout=5)
    s.sendall(data)
    if wait:
        time.sleep(wait)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    try:
        header, body = recv_frame(s)
    except (ConnectionResetError, ProtocolError):
        return None, True
    try:
        closed = s.recv(1) == b""
    except ConnectionResetError:
        closed = True
    s.close()
    return (header, body), closed


FUZZ = {
    "random bytes": random.Random(0).randbytes(300),
    "bad magic": _header(magic=b"GET ") + b"x" * 10,
    "wrong version": _header(version=2),
    "oversized length": _header(length=(1 << 20) + 1),
    "unknown type": _header(ftype=0x7E),
    "server-only type": _header(ftype=FrameType.RESULT, length=4) + b"abcd",
    "truncated header": _header()[:11],
    "truncated body": _header(length=5000) + b"z" * 100,
    "OPEN not JSON": pack_frame(FrameType.OPEN, b"{not json"),
    "OPEN not an object": pack_frame(FrameType.OPEN, b"[1, 2]"),
    "OPEN unknown key": pack_frame(FrameType.OPEN, json_body({"codec": "jpeg", "pickle": "no"})),
}


@pytest.mark.parametrize("case", list(FUZZ))
def test_fuzzed_frames_get_an_error_and_never_crash_the_server(server, task_model, test_images, case):
    reply, closed = _raw_exchange(server.address, FUZZ[case])
    assert closed, "a malformed frame ends that connection"
    if reply is not None:
        header, body = reply
        assert header.type == FrameType.ERROR and header.flags & FLAG_CLOSING and body
    _good_client_is_served(server, task_model, test_images)


def test_stalled_frame_hits_the_read_timeout(server, task_model, test_images):
    reply, closed = _raw_exchange(server.address, _header(length=100) + b"abc", half_close=False, wait=0.8)
    assert closed and reply is not None and b"read timeout" in reply[1]
    _good_client_is_served(server, task_model, test_images)


def test_bad_payload_and_bad_open_keep_the_connection(server, task_model, test_images):
    data, pred = _jpeg_payload(task_model, test_images[0])
    with LiveClient(*server.address, timeout_s=10) as client:
        with pytest.raises(RemoteError, match="unknown codec 'nosuch'.*valid codecs: .*jpeg"):
            client.open("nosuch")
        with pytest.raises(RemoteError, match="has no option 'codec.qualty'"):
            client.open("jpeg", {"qualty": 5})
        with pytest.raises(RemoteError, match="hosts model 'vit_fmnist', the client uses 'resnet50'"):
            client.open("jpeg", model="resnet50")
        with pytest.raises(RemoteError, match="is not open on this connection"):
            client.infer(99, 0, data)
        cid, _ = client.open("jpeg", {"quality": 50})
        for bad in (b"", b"\xff\xd8garbage", random.Random(1).randbytes(5000)):
            with pytest.raises(RemoteError, match="jpeg") as err:
                client.infer(cid, 1, bad)
            assert not err.value.closing
        assert client.infer(cid, 2, data).result.pred == pred  # same connection still served
        stats = client.stats()
    assert stats["payload_errors"] >= 3 and stats["connections_open"] >= 1 and stats["rss_bytes"] > 0


def _wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_concurrent_clients_and_the_client_limit(server, task_model, test_images):
    from splitbench.live.load import run_round

    data, pred = _jpeg_payload(task_model, test_images[0])
    open_args = {"codec": "jpeg", "options": {"quality": 50}}
    out = run_round(*server.address, clients=4, requests=5, payloads=[data], expected=[pred], open_args=open_args)
    assert out["completed"] == 20 and out["errors"] == 0 and out["wrong_answers"] == 0
    _wait_for(lambda: server.server.stats.connections_open == 0)
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(4)]
    try:
        _wait_for(lambda: server.server.stats.connections_open == 4)
        with socket.create_connection(server.address, timeout=5) as extra:  # one too many
            header, body = recv_frame(extra)
        assert header.type == FrameType.ERROR and header.flags & FLAG_CLOSING and b"server busy" in body
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    _good_client_is_served(server, task_model, test_images)


def test_no_server_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(LiveError, match=f"no splitbench server answers at 127.0.0.1:{port}"):
        LiveClient("127.0.0.1", port, timeout_s=2).connect()


# -- live runs -------------------------------------------------------------------------------------
def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from splitbench.paths import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["measure.progress=false", "measure.threads=1", *overrides])


def test_live_run_on_localhost(server, tmp_path):
    """The CLI end to end against a running server (the shaped-link test covers a spawned one)."""
    host, port = server.address
    proc = run_cli("mode=live", f"server.host={host}", f"server.port={port}", "codec=jpeg", "data.limit=12",
                   "measure.progress=false", "measure.threads=1", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr
    assert "live ms mean/p50/p95" in proc.stdout
    row = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    assert row.live_n == 12 and row.live_errors == 0 and row.live_same_pred_as_model == 1.0
    assert row.live_accuracy == row.accuracy and "unshaped" in row.live_link
    assert 0 < row.live_latency_p50_ms <= row.live_latency_p95_ms and row.live_added_rtt_ms == 0
    assert len(pd.read_csv(tmp_path / "run" / "live_records.csv")) == 12


def test_live_mode_against_a_running_server(server, tmp_path):
    from splitbench.run import execute

    host, port = server.address
    rows = execute(_compose("mode=live", f"server.host={host}", f"server.port={port}", "codec=png",
                            "data.limit=5", "live.add_rtt=true", "bandwidth.rtt_ms=3"), tmp_path)
    row = rows[0]
    assert row["live_n"] == 5 and row["live_errors"] == 0 and row["live_same_pred_as_model"] == 1.0
    assert row["live_added_rtt_ms"] == 3 and row["live_latency_p50_ms"] > 3
    assert (tmp_path / "results.csv").exists() and (tmp_path / "live_records.csv").exists()


def test_live_mode_without_a_server_is_a_clear_error(tmp_path):
    from splitbench.run import execute

    with pytest.raises(LiveError, match="no splitbench server answers at 127.0.0.1:1 .*splitbench.serve"):
        execute(_compose("mode=live", "server.port=1", "data.limit=4"), tmp_path)


def test_unknown_mode_lists_both():
    from splitbench import ConfigError
    from splitbench.run import execute

    with pytest.raises(ConfigError, match="valid modes: model, live"):
        execute(_compose("mode=fast", "data.limit=4"))


# -- the shaped link (root only) -----------------------------------------------------------------------
@pytest.mark.skipif(NO_SHAPING is not None, reason=f"no shaped link here: {NO_SHAPING}")
def test_shaped_link_matches_the_latency_model():
    import os

    from splitbench.live.shaping import NETNS_DIR, netns, primer_size, shaped_link

    size = 30_000
    with shaped_link(10) as link:
        names = (link.device_ns, link.server_ns)
        with netns(link.server_ns):
            listener = socket.socket()
            listener.bind((link.server_addr, 0))
            listener.listen(4)
        with ServerThread(EdgeServer(None), sock=listener) as srv, \
                LiveClient(*srv.address, netns=link.device_ns, timeout_s=10) as client:
            client.sink(b"warm-up")
            times = []
            for _ in range(3):  # the median: a loaded host can delay the server's read by a few ms
                time.sleep(0.05)  # a full bucket again, then the filler empties it
                times.append(client.sink(os.urandom(size), primer=primer_size(link.burst_bytes)).uplink_seconds)
            t = sorted(times)[1]
            predicted = float(Link(name="10", mbps=10, rtt_ms=0).transmit_seconds(size))
            assert abs(t - predicted) / predicted < 0.10, (t, predicted)
    assert not any(os.path.exists(os.path.join(NETNS_DIR, n)) for n in names), "namespaces torn down"


@pytest.mark.skipif(NO_SHAPING is not None, reason=f"no shaped link here: {NO_SHAPING}")
def test_live_run_on_a_shaped_link(tmp_path):
    from splitbench.run import execute

    row = execute(_compose("mode=live", "live.shape=true", "codec=jpeg", "bandwidth=0.1mbps", "data.limit=5",
                           "live.warmup=1"), tmp_path)[0]
    assert row["live_errors"] == 0 and row["live_same_pred_as_model"] == 1.0 and "tbf 0.1 Mbit/s" in row["live_link"]
    assert row["live_added_rtt_ms"] == row["rtt_ms"] == 10 and row["live_latency_p50_ms"] > 10
    # The link part (request time minus server compute) against the model's RTT + transmit. A slow link
    # keeps the host's scheduling noise (a few ms on a loaded 2-core machine) small beside it.
    model_net = row["lat_rtt_ms"] + row["lat_transmit_ms"]
    assert abs(row["live_network_mean_ms"] - model_net) / model_net < 0.2, (row["live_network_mean_ms"], model_net)


def test_without_root_shaping_says_so(monkeypatch):
    from splitbench.live import shaping

    monkeypatch.setattr(shaping.os, "geteuid", lambda: 1000)
    assert "needs root" in shaping.shaping_unavailable()
    with pytest.raises(shaping.ShapingError, match="needs root"):
        with shaping.shaped_link(10):
            pass


@pytest.mark.parametrize("live,needle", [({"shpe": True}, "live has no option(s) shpe"),
                                         ({"shape": "yes"}, "live.shape must be true or false"),
                                         ({"warmup": -1}, "live.warmup must be an integer >= 0")])
def test_live_options_are_checked(live, needle):
    from omegaconf import OmegaConf

    from splitbench import ConfigError
    from splitbench.live.runner import live_options

    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        live_options(OmegaConf.create({"live": live}))
