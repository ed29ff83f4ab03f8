"""Measurement: sharding across processes changes nothing but the wall time; every records file
carries the conditions it was timed under; timings from a busy host are flagged, not trusted."""
from __future__ import annotations

import hashlib
import json
import time

import pandas as pd
import pytest

from splitbench import conditions
from splitbench.codecs import create_codec
from splitbench.data import build_dataset
from splitbench.errors import ConfigError
from splitbench.measure import Measurer, RecordStore, measured_records
from splitbench.shard import chunks_for

MODEL = {"name": "vit_fmnist", "checkpoint": None, "pretrained": True}
DATA = {"name": "fashion_mnist", "split": "test", "root": None, "limit": 40}
SAME = ["index", "label", "pred", "offloaded", "bytes", "est_bits", "flops_device", "flops_server"]


@pytest.fixture(scope="module")
def dataset():
    return build_dataset(DATA)


def payload_hash(codec_name: str, task, dataset, indexes) -> str:
    """md5 of the real payloads, so 'same bytes' means the same bitstreams, not just lengths."""
    import torch

    codec = create_codec(codec_name)
    codec.bind(task)
    h = hashlib.md5()
    with torch.inference_mode():
        for i in indexes:
            for p in codec.encode(codec.device_forward(dataset[int(i)][0][None])):
                h.update(p.data)
    return h.hexdigest()


@pytest.mark.parametrize("codec_name", ["jpeg", "bmshj2018"])
def test_sharded_records_equal_a_single_process(tmp_path, task_model, dataset, codec_name, batch_size=1):
    one, _, _ = measured_records(create_codec(codec_name), task_model, dataset, DATA, batch_size,
                                 RecordStore(tmp_path / "one"), progress=False, workers=1, model_cfg=MODEL)
    store = RecordStore(tmp_path / "two")
    two, key, cached = measured_records(create_codec(codec_name), task_model, dataset, DATA, batch_size, store,
                                        progress=False, workers=2, model_cfg=MODEL)
    assert not cached and store.conditions(key)["workers"] == 2
    assert list(two["index"]) == list(range(len(dataset)))
    extras = [c for c in one.columns if c not in SAME and not c.startswith("t_")]
    pd.testing.assert_frame_equal(one[SAME + extras], two[SAME + extras])
    assert (two[["t_device", "t_encode", "t_decode", "t_server"]] > 0).all().all()
    assert payload_hash(codec_name, task_model, dataset, one["index"]) == \
        payload_hash(codec_name, task_model, dataset, two["index"])


def test_chunks_start_on_batch_boundaries():
    for n, workers, bs in [(40, 2, 1), (10_000, 3, 8), (37, 4, 5)]:
        chunks = chunks_for(n, workers, bs)
        assert chunks[0][0] == 0 and chunks[-1][1] == n
        assert all(a % bs == 0 and b == c for (a, b), (c, _) in zip(chunks, chunks[1:]))


def test_a_worker_error_is_the_same_one_line_error_in_the_parent(tmp_path, task_model, dataset, monkeypatch):
    codec = create_codec("jpeg")
    codec.options = lambda: {"quality": 1000}  # what the worker rebuilds from: an invalid quality
    slow = Measurer.records  # the parent dawdles, so a worker certainly takes a chunk

    def dawdle(self, *args, **kwargs):
        time.sleep(2.0)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(Measurer, "records", dawdle)
    with pytest.raises(ConfigError) as info:
        measured_records(codec, task_model, dataset, DATA, 1, RecordStore(tmp_path), progress=False,
                         workers=2, model_cfg=MODEL)
    assert "\n" not in str(info.value) and "quality" in str(info.value)
    assert not list(tmp_path.glob("*.csv")), "a failed measurement leaves no cache entry"


def test_records_file_carries_its_conditions(tmp_path, task_model, dataset):
    store = RecordStore(tmp_path)
    _, key, _ = measured_records(create_codec("png"), task_model, dataset, DATA, 1, store, progress=False,
                                 threads=1, workers=1)
    cond = json.loads((tmp_path / f"{key}.json").read_text())
    assert (tmp_path / f"{key}.csv").exists()
    assert cond["threads"] == 1 and cond["workers"] == 1 and cond["clock"] == "wall"
    assert cond["cores"] >= 1 and cond["cpu"] and {"load_before", "load_after", "contended"} <= set(cond)


def test_contended_timings_are_flagged_and_remeasured_when_quiet(tmp_path, task_model, dataset, monkeypatch):
    store = RecordStore(tmp_path)
    monkeypatch.setattr(conditions, "runnable_now", lambda: 64.0)  # a host with 64 runnable tasks
    _, key, _ = measured_records(create_codec("png"), task_model, dataset, DATA, 1, store, progress=False)
    assert json.loads((tmp_path / f"{key}.json").read_text())["contended"] is True
    fresh = RecordStore(tmp_path)
    _, _, cached = measured_records(create_codec("png"), task_model, dataset, DATA, 1, fresh, progress=False)
    assert cached, "still busy: the flagged entry is reused (bytes and predictions are valid)"
    monkeypatch.setattr(conditions, "runnable_now", lambda: 1.0)  # only this process: quiet
    fresh = RecordStore(tmp_path)
    _, _, cached = measured_records(create_codec("png"), task_model, dataset, DATA, 1, fresh, progress=False)
    assert not cached and fresh.conditions(key)["contended"] is False


def test_workers_setting_is_checked():
    from splitbench.measure import resolve_workers

    assert resolve_workers("auto", 10, 1) == 1  # small runs never pay for worker start-up
    assert resolve_workers(3, 2, 1) == 2
    with pytest.raises(ConfigError, match="measure.workers"):
        resolve_workers("many", 100, 1)
