"""runtime.device: resolving it (one-line errors), where model stages run, and bitstreams that do
not depend on the device.

The CPU tests run everywhere. The GPU tests take the device the timm way, from ``TORCH_DEVICE``
(default ``cuda``), and skip with a reason where there is no CUDA GPU.

The cross-device mechanism is exercised without a GPU too: a codec bound to a copy of the task
model on the ``meta`` device (tensors without data: any model stage run there produces nothing
usable) still encodes and decodes bit-exactly like the CPU instance, which shows that entropy
coding never touches a moved network.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch

from splitbench import runtime
from splitbench.codecs import Codec, create_codec
from splitbench.errors import ConfigError, SplitbenchError
from splitbench.measure import Measurer, RecordStore, measured_records, records_key, resolve_workers
from splitbench.runtime import off_cpu, resolve_device

from conftest import REPO

GPU = os.environ.get("TORCH_DEVICE", "cuda")  # the timm way: TORCH_DEVICE=cuda:1 picks another GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not GPU.startswith("cuda"),
                                reason="needs a CUDA GPU (TORCH_DEVICE=cuda[:N])")
LEARNED = {  # codec -> options (small, shipped points)
    "frankensplit": {}, "tofc": {}, "elic": {}, "bmshj2018": {}, "patchsel": {"eta": 0.0},
}
DATA = {"name": "fashion_mnist", "split": "test", "root": None, "limit": 8}


def gpus(monkeypatch, n: int) -> None:
    """Pretend this machine sees ``n`` CUDA GPUs (resolving never initialises CUDA)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)


# -- resolving ----------------------------------------------------------------------------------
def test_resolve_device_choices(monkeypatch):
    gpus(monkeypatch, 0)
    assert resolve_device("auto") == resolve_device(None) == resolve_device(" CPU ") == torch.device("cpu")
    gpus(monkeypatch, 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("gpu_count,text,needle", [
    (0, "cuda", "runtime.device=cuda but no CUDA GPU is visible (torch.cuda.device_count() is 0); "
                "valid devices here: auto, cpu"),
    (0, "cuda:0", "valid devices here: auto, cpu"),
    (2, "cuda:7", "runtime.device=cuda:7 but this machine has 2 CUDA GPUs (cuda:0..cuda:1); valid devices "
                  "here: auto, cpu, cuda, cuda:0, cuda:1"),
    (1, "cuda:1", "this machine has 1 CUDA GPU (cuda:0); valid devices here: auto, cpu, cuda, cuda:0"),
    (1, "gpu", "unknown runtime.device 'gpu'; valid devices: auto, cpu, cuda, cuda:N (N: a GPU index)"),
    (0, "cuda:-1", "unknown runtime.device 'cuda:-1'; valid devices: auto, cpu, cuda, cuda:N"),
])
def test_resolve_device_errors_are_one_line(monkeypatch, gpu_count, text, needle):
    gpus(monkeypatch, gpu_count)
    with pytest.raises(ConfigError) as info:
        resolve_device(text)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_cpu_only_torch_build_says_so(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="this torch build has no CUDA support; valid devices here: auto, cpu"):
        resolve_device("cuda")


def test_runtime_settings_are_checked(monkeypatch):
    gpus(monkeypatch, 0)
    assert runtime.runtime_settings({"device": "cpu", "loader_workers": 2}).loader_workers == 2
    with pytest.raises(ConfigError, match=r"runtime has no option 'runtime.devices' \(did you mean 'runtime.device'"):
        runtime.runtime_settings({"devices": "cpu"})
    with pytest.raises(ConfigError, match="runtime.loader_workers must be a number >= 0 or auto, got -1"):
        runtime.runtime_settings({"loader_workers": -1})
    assert runtime.loader_workers("auto", "cpu") == 0  # loader processes would take the timed stages' cores
    assert runtime.loader_workers("auto", "cuda") == min(4, runtime.cores_available() - 1)
    assert resolve_workers("auto", 10_000, 1, "cuda:0") == 1  # one measuring process per GPU by default


@pytest.mark.parametrize("config", ["config.yaml", "train.yaml"])
def test_yaml_restates_the_declared_defaults(config):
    import yaml

    from splitbench.options import declared, defaults
    from splitbench.paths import CONF_DIR

    assert yaml.safe_load((CONF_DIR / config).read_text())["runtime"] == defaults(declared(runtime.RuntimeSettings))


def test_cpu_clock_cannot_time_a_gpu(monkeypatch):
    from omegaconf import OmegaConf

    from splitbench.job import MeasureSettings, job_runtime

    gpus(monkeypatch, 1)
    cfg = OmegaConf.create({"runtime": {"device": "cuda", "loader_workers": "auto"}})
    with pytest.raises(ConfigError, match="measure.clock=cpu .* cannot time GPU work; .* use measure.clock=wall"):
        job_runtime(cfg, MeasureSettings(clock="cpu"))
    assert job_runtime(cfg, MeasureSettings(clock="wall"))[1] == torch.device("cuda", 0)


# -- the command line -------------------------------------------------------------------------------
def test_cli_runs_on_the_cpu(cli, tmp_path):
    code, out, err = cli("codec=jpeg", "data.limit=4", "runtime.device=cpu", "measure.progress=false",
                         f"hydra.run.dir={tmp_path}/run")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    assert row.timing_device == "cpu" and row.n == 4 and "models on" not in out


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cli_gpu_that_is_not_there_fails_fast_without_a_run_directory(cli, tmp_path, monkeypatch, device):
    gpus(monkeypatch, 0)  # this machine, or any without a GPU
    code, _, err = cli("codec=jpeg", "data.limit=4", f"runtime.device={device}", f"hydra.run.dir={tmp_path}/run")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"splitbench: error: runtime.device={device} but no CUDA GPU is visible "
                        f"(torch.cuda.device_count() is 0); valid devices here: auto, cpu")
    assert not (tmp_path / "run").exists()


def test_serve_device_errors_are_one_line(capsys):
    from splitbench import serve

    with pytest.raises(SystemExit) as info:
        serve.main(["--device", "cuda:99"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("splitbench: error: --device=cuda:99 but ") and "\n" not in err
    with pytest.raises(SystemExit):
        serve.main(["--device", "tpu"])
    assert "unknown --device 'tpu'; valid devices: auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_fork_server_preload_leaves_cuda_uninitialised():
    """Live workers are forked from a fork server that imports splitbench.live.worker first; CUDA
    works in a forked child only if that import initialised none of it."""
    code = ("import torch, torch.cuda as c; calls = []\n"
            "for name in ('_lazy_init', 'is_available', 'init', 'current_device', 'set_device'):\n"
            "    setattr(c, name, (lambda n: lambda *a, **k: calls.append(n))(name))\n"
            "import splitbench.live.worker\n"
            "assert not calls and not c.is_initialized(), calls\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


# -- records ------------------------------------------------------------------------------------------
def test_records_are_keyed_by_device(task_model, monkeypatch, tmp_path):
    from splitbench import measure

    codec = create_codec("jpeg")
    cpu = records_key(codec, task_model, DATA, 1)
    labels = {"cpu": "cpu", "a": "cuda:0 NVIDIA H100 80GB HBM3", "b": "cuda:0 NVIDIA A100-SXM4-40GB"}
    keys = {}
    for name, label in labels.items():
        monkeypatch.setattr(measure, "device_label", lambda device, label=label: label)
        keys[name] = records_key(codec, task_model, DATA, 1)
    assert keys["cpu"] == cpu and len(set(keys.values())) == 3  # CPU keys as before; GPUs never mix
    monkeypatch.undo()
    from splitbench.data import build_dataset

    store = RecordStore(tmp_path)
    _, key, _ = measured_records(codec, task_model, build_dataset(DATA), DATA, 1, store, progress=False)
    assert json.loads((tmp_path / f"{key}.json").read_text())["device"] == "cpu"


def test_loader_workers_read_the_same_samples(task_model):
    from splitbench.data import build_dataset

    dataset = build_dataset(DATA)
    one = Measurer(create_codec("png"), task_model, dataset, batch_size=3).records(0, 8)
    two = Measurer(create_codec("png"), task_model, dataset, batch_size=3, loader_workers=1).records(0, 8)
    same = ["index", "label", "pred", "bytes"]
    assert [[r[k] for k in same] for r in one] == [[r[k] for k in same] for r in two]


class _LeakyCodec(Codec):
    """Hands encode a tensor that is not on the CPU (what a forgotten ``.cpu()`` does on a GPU)."""

    name = "leaky"

    def __init__(self) -> None:
        pass

    def device_forward(self, images):
        return images.to("meta")

    def encode(self, features):
        raise AssertionError("never reached")

    def decode(self, data):
        raise AssertionError("never reached")


def test_the_wire_side_must_be_on_the_cpu(task_model):
    from splitbench.data import build_dataset

    with pytest.raises(SplitbenchError, match="codec 'leaky': device_forward returned a tensor on meta; the "
                                              "entropy-coding side of a codec takes and returns CPU tensors"):
        Measurer(_LeakyCodec(), task_model, build_dataset(DATA))


# -- cross-device bitstreams without a GPU ----------------------------------------------------------
def _equal(a, b) -> bool:
    """Bit-exact equality of decoded features (tensors, arrays, lists/tuples, dataclasses)."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(a):
        return _equal([getattr(a, f.name) for f in dataclasses.fields(a)], [getattr(b, f.name) for f in dataclasses.fields(b)])
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_entropy_coding_never_touches_a_moved_network(name, task_model, test_images):
    """Instance ``cpu`` runs everything on the CPU; a fresh instance ``moved`` is bound to a task
    model on ``meta``, so all its model stages are there. It must still produce the same bytes from
    the CPU's device-half output and decode any payload to the same CPU tensors: the encoder and
    the decoder use only CPU modules (entropy models, hyper/context networks, CDF tables)."""
    images = test_images[0][:4]
    cpu = create_codec(name, **LEARNED[name])
    cpu.bind(task_model)
    moved = create_codec(name, **LEARNED[name])
    moved.bind(copy.deepcopy(task_model).to("meta"))
    assert cpu.device.type == "cpu" and moved.device.type == "meta"
    assert all(p.device.type == "meta" for m in moved.device_modules() for p in m.parameters())
    with torch.inference_mode():
        features = cpu.device_forward(images)
        assert off_cpu(features) is None
        sent = [p.data for p in cpu.encode(features)]
        assert [p.data for p in moved.encode(features)] == sent
        sent = [b for b in sent if b]  # patchsel/eta=0 offloads every image; kept general
        decoded = moved.decode(sent)
        assert off_cpu(decoded) is None and _equal(decoded, cpu.decode(sent))
        logits = cpu.server_forward(decoded)  # the server half can be anywhere: here, the CPU
    assert logits.shape == (len(sent), 10)


# -- on a GPU ---------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("device", [GPU])
@pytest.mark.parametrize("name", sorted(LEARNED))
def test_cross_device_decode_is_bit_exact(name, device, task_model, test_images):
    """Device half on the GPU, server half on the CPU, and the other way round: the bytes are those
    an all-CPU codec codes from the same device-half output, and they decode to equal tensors on
    either end. The GPU's device half itself may quantise a latent near a rounding boundary
    differently from the CPU's (float rounding before quantisation), so end-to-end byte equality
    with an all-CPU run is reported, not required."""
    device = resolve_device(device)
    runtime.prepare(device)
    images = test_images[0][:8]
    cpu = create_codec(name, **LEARNED[name])
    cpu.bind(task_model)
    gpu = create_codec(name, **LEARNED[name])
    gpu.bind(copy.deepcopy(task_model).to(device))
    assert gpu.device.type == "cuda"
    with torch.inference_mode():
        for encoder, decoder in ((gpu, cpu), (cpu, gpu)):
            features = encoder.device_forward(images)
            assert off_cpu(features) is None
            sent = [p.data for p in encoder.encode(features)]
            assert sent == [p.data for p in decoder.encode(features)]  # an all-CPU encode of these features
            sent = [b for b in sent if b]
            decoded = decoder.decode(sent)
            assert off_cpu(decoded) is None and _equal(decoded, encoder.decode(sent))
            assert decoder.server_forward(decoded).shape == (len(sent), 10)
        same = sum(a.data == b.data for a, b in zip(gpu.encode(gpu.device_forward(images)),
                                                      cpu.encode(cpu.device_forward(images))))
    if same < len(images):
        warnings.warn(f"{name}: {same}/{len(images)} payloads of the GPU's device half equal the CPU's "
                      f"(latents quantised differently near a rounding boundary)")


@needs_cuda
@pytest.mark.parametrize("device", [GPU])
def test_224_run_on_the_gpu(cli, tmp_path, device):
    code, out, err = cli("data=photos", "model=efficientnet_lite0", "codec=jpeg", "data.limit=16",
                         f"runtime.device={device}", "measure.progress=false", f"hydra.run.dir={tmp_path}/run")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    assert row.timing_device.startswith("cuda:") and row.timing_workers == 1 and row.n == 16
    assert "models on cuda:" in out and row.lat_server_ms > 0


@needs_cuda
@pytest.mark.parametrize("device", [GPU])
def test_short_training_on_the_gpu(tmp_path, device, task_model, test_images):
    from test_train import train

    entry = train(tmp_path, "codec=frankensplit", "codec.train.batch_size=8", f"runtime.device={device}")
    assert entry["train_device"].startswith("cuda")
    state = torch.load(tmp_path / "run" / entry["file"], weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())  # checkpoints hold CPU tensors
    codec = create_codec("frankensplit", checkpoint=str(tmp_path / "run" / entry["file"]))
    codec.bind(task_model)  # and run on the CPU
    with torch.inference_mode():
        payloads = codec.encode(codec.device_forward(test_images[0][:2]))
        assert codec.server_forward(codec.decode([p.data for p in payloads])).shape == (2, 10)


# -- training on the CPU ------------------------------------------------------------------------------
def test_a_training_step_on_the_cpu(tmp_path):
    from test_train import train

    entry = train(tmp_path, "codec=frankensplit", "codec.train.batch_size=8", "runtime.device=cpu",
                  "runtime.loader_workers=1")
    assert entry["train_device"] == "cpu" and entry["steps"] == 2 and entry["metrics"]["bytes_per_image"] > 0
    state = torch.load(tmp_path / "run" / entry["file"], weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())
