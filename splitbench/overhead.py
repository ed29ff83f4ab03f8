"""What splitbench itself costs, measured in-process: the framework versus a bare loop doing a
codec's four stage calls, the entropy coder's own time versus the Python around it, and per-image
stage times with an unrelated CPU hog running. Used by ``python -m splitbench.benchmark``.
"""
from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from typing import Any, Iterator

import torch

from .codecs import create_codec
from .job import Loaded
from .measure import RecordStore, measured_records

MODEL = {"name": "vit_fmnist", "checkpoint": None, "pretrained": True}
STAGES = ["t_device", "t_encode", "t_decode", "t_server"]


def data_cfg(limit: int) -> dict[str, Any]:
    return {"name": "fashion_mnist", "split": "test", "root": None, "limit": limit}


@torch.inference_mode()
def bare_loop(codec: Any, dataset: Any) -> float:
    """Seconds for exactly the four stage calls per image (after one untimed warm-up image)."""
    def one(i: int) -> int:
        x, _ = dataset[i]
        payloads = codec.encode(codec.device_forward(x[None]))
        if payloads[0].offloaded:
            return int(codec.server_forward(codec.decode([payloads[0].data]))[0].argmax())
        return int(payloads[0].local_prediction)

    one(0)
    start = time.perf_counter()
    for i in range(len(dataset)):
        one(i)
    return time.perf_counter() - start


def framework_vs_bare(codec_name: str, limit: int, rounds: int = 3) -> tuple[float, float]:
    """(median measured/bare ratio, bare ms per image); A and B interleaved, same process and images."""
    task, cfg = Loaded().task_model(MODEL), data_cfg(limit)
    dataset = Loaded().dataset(cfg)
    ratios, bare_ms = [], []
    for _ in range(rounds):
        codec = create_codec(codec_name)
        codec.bind(task)
        bare = bare_loop(codec, dataset)
        start = time.perf_counter()
        measured_records(create_codec(codec_name), task, dataset, cfg, 1, RecordStore(enabled=False),
                         progress=False, workers=1)
        ratios.append((time.perf_counter() - start) / bare)
        bare_ms.append(1e3 * bare / len(dataset))
    return statistics.median(ratios), statistics.median(bare_ms)


class _Clock:
    """Exclusive time: a timed call nested in another timed call is charged to the inner clock only."""

    _stack: list[list[float]] = []

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [0.0]  # time spent in nested timed calls
            _Clock._stack.append(frame)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _Clock._stack.pop()
                self.seconds += elapsed - frame[0]
                if _Clock._stack:
                    _Clock._stack[-1][0] += elapsed
        return timed


class _TimedCoder:
    """Stands in for a compressai rANS class; every method call counts as coder time."""

    def __init__(self, cls: Any, clock: _Clock) -> None:
        self._obj, self._clock = cls(), clock

    def __getattr__(self, name: str) -> Any:
        return self._clock.wrap(getattr(self._obj, name))


def _wrapped(clock: _Clock, attr: Any) -> Any:
    """A class attribute timed by ``clock``, keeping staticmethod/classmethod semantics."""
    if isinstance(attr, (staticmethod, classmethod)):
        return type(attr)(clock.wrap(attr.__func__))
    return clock.wrap(attr)


@contextlib.contextmanager
def _patched(targets: list[tuple[Any, str, Any]]) -> Iterator[None]:
    saved = [(obj, name, vars(obj)[name]) for obj, name, _ in targets]  # raw descriptors
    try:
        for obj, name, value in targets:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def coding_share(codec_name: str, limit: int) -> dict[str, float]:
    """Entropy coding per image (encode + decode) split three ways, exclusive times, and
    ``stages``: the whole encode + decode stage time per image (for ELIC this includes its context
    model networks, which run inside entropy coding):

    ``rans``: inside compressai's C++ coder methods (argument conversion included); ``compressai``:
    compressai's Python entropy-model methods (quantize, dequantize, likelihoods, indexes, compress,
    decompress); ``ours``: the rest of the codec's coding entry points (LatentCoder, TokenCoder,
    FrankenSplitNet.compress/decompress), i.e. splitbench's glue. TokenCoder's entry points also run
    TOFC's small hyperprior networks, which count as ``ours`` here.
    """
    import compressai.ans as ans
    from compressai.entropy_models import entropy_models as em

    from baselines.frankensplit import model as fs_model
    from baselines.learned_image import stream
    from baselines.tofc import coder as tofc_coder

    rans, coding, lib = _Clock(), _Clock(), _Clock()
    factory = {cls: (lambda c=cls: _TimedCoder(getattr(ans, c), rans)) for cls in ("BufferedRansEncoder", "RansDecoder")}
    targets: list[tuple[Any, str, Any]] = [
        (stream, "BufferedRansEncoder", factory["BufferedRansEncoder"]), (stream, "RansDecoder", factory["RansDecoder"]),
        (tofc_coder, "BufferedRansEncoder", factory["BufferedRansEncoder"]),
        (tofc_coder, "RansDecoder", factory["RansDecoder"]),
        (em._EntropyCoder, "encode_with_indexes", rans.wrap(em._EntropyCoder.encode_with_indexes)),
        (em._EntropyCoder, "decode_with_indexes", rans.wrap(em._EntropyCoder.decode_with_indexes)),
    ]
    entry = {"elic": (stream.LatentCoder, ["__init__", "bottleneck", "gaussian", "finish"]),
             "bmshj2018": (stream.LatentCoder, ["__init__", "bottleneck", "gaussian", "finish"]),
             "tofc": (tofc_coder.TokenCoder, ["encode", "decode"]),
             "frankensplit": (fs_model.FrankenSplitNet, ["compress", "decompress"])}[codec_name]
    targets += [(entry[0], m, coding.wrap(getattr(entry[0], m))) for m in entry[1]]
    for cls, names in [(em.EntropyModel, ["quantize", "dequantize", "compress", "decompress"]),
                       (em.EntropyBottleneck, ["forward", "_get_medians", "_build_indexes", "compress", "decompress",
                                               "_likelihood"]),
                       (em.GaussianConditional, ["forward", "_likelihood", "build_indexes"])]:
        targets += [(cls, m, _wrapped(lib, cls.__dict__[m])) for m in names if m in cls.__dict__]
    task, dataset = Loaded().task_model(MODEL), Loaded().dataset(data_cfg(limit))
    codec = create_codec(codec_name)
    codec.bind(task)
    stages = 0.0  # the encode + decode stage calls themselves (what the runner times)
    with _patched(targets), torch.inference_mode():
        for i in range(len(dataset)):
            if i == 1:  # the first image warms up; count from the second
                rans.seconds = coding.seconds = lib.seconds = stages = 0.0
            features = codec.device_forward(dataset[i][0][None])
            start = time.perf_counter()
            payloads = codec.encode(features)
            if payloads[0].offloaded:
                codec.decode([payloads[0].data])
            stages += time.perf_counter() - start
    n = max(1, len(dataset) - 1)
    return {"rans": 1e3 * rans.seconds / n, "compressai": 1e3 * lib.seconds / n, "ours": 1e3 * coding.seconds / n,
            "stages": 1e3 * stages / n}


def stage_ms_with_hog(codec_name: str, limit: int, threads: int | None = 1) -> tuple[float, float, bool]:
    """(idle, with one CPU hog) mean per-image stage ms, and whether the busy run was flagged.

    ``threads``: as ``measure.threads`` (1, the default; None: torch's default, every core).
    """
    task, cfg = Loaded().task_model(MODEL), data_cfg(limit)
    dataset = Loaded().dataset(cfg)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or torch.get_num_threads())
    try:
        def run() -> tuple[float, bool]:
            store = RecordStore(enabled=False)
            df, key, _ = measured_records(create_codec(codec_name), task, dataset, cfg, 1, store,
                                          progress=False, workers=1)
            return 1e3 * float(df[STAGES].sum(axis=1).mean()), bool(store.conditions(key)["contended"])

        idle, _ = run()
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            busy, flagged = run()
        finally:
            hog.kill()
            hog.wait()
    finally:
        torch.set_num_threads(before)
    return idle, busy, flagged
