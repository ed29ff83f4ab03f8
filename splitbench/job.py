"""One job, built once: the link, profiles, codec, task model, data and record store of a run.

Both executors work over the same :class:`Job`: the model executor (splitbench.run.run_model:
measure records, price them) and the live one (splitbench.live.runner.run_live: also send them).
Nothing here is module state. What is expensive and shared between the jobs of one process (a
basic-launcher sweep runs them all in one process, and must load the task model once) lives in a
:class:`Loaded` object that the caller owns and passes in; measuring workers (splitbench.shard)
build their own from the same configs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from .channel import Link, link_from_config
from .codecs import Codec, create_codec
from .compute import ComputeProfile, profile_from_config
from .data import build_dataset, check_fits, dataset_identity
from .errors import ConfigError
from .measure import CLOCKS, RecordStore
from .models import TaskModel, build_model
from .options import OneOf, Range, build
from .runtime import RuntimeSettings, loader_workers, resolve_device, runtime_settings
from .shard import Pools


@dataclass(frozen=True)
class MeasureSettings:
    """The declared ``measure.*`` options (conf/config.yaml documents each)."""

    batch_size: Annotated[int, Range(1)] = 1
    threads: Annotated[int, Range(1)] | None = 1
    workers: int | str | None = "auto"  # a positive number or auto (measure.resolve_workers checks)
    clock: Annotated[str, OneOf(*CLOCKS)] = "wall"
    cache: bool = True
    reference: str | None = "raw"
    progress: bool = True


def _key(cfg: Any) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


@dataclass
class Loaded:
    """Task models, datasets and record stores this process has built, keyed by their configs.

    Owned by whoever runs jobs (the CLI entry point, a measuring worker, a test) and passed in, so
    a sweep in one process builds each once and no module keeps hidden state.
    """

    models: dict[str, TaskModel] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    stores: dict[bool, RecordStore] = field(default_factory=dict)
    pools: Pools = field(default_factory=Pools)  # measuring worker pools (measure.workers > 1)

    def task_model(self, model_cfg: dict[str, Any], device: torch.device | str = "cpu") -> TaskModel:
        """Built once per (model config, device), on ``device`` (where every model stage then runs)."""
        key = _key([model_cfg, str(device)])
        if key not in self.models:
            self.models[key] = build_model(model_cfg).to(device)
        return self.models[key]

    def dataset(self, data_cfg: dict[str, Any], task: TaskModel | None = None) -> Dataset:
        """Built once per (data config, task model); checked against the model's input before use."""
        key = _key([data_cfg, task.name if task else None, task.input_size if task else None])
        if key not in self.datasets:
            dataset = build_dataset(data_cfg, model=task)
            if task is not None:
                check_fits(dataset, data_cfg["name"], task)
            self.datasets[key] = dataset
        return self.datasets[key]

    def store(self, enabled: bool) -> RecordStore:
        return self.stores.setdefault(enabled, RecordStore(enabled=enabled))

    def close(self) -> None:
        """Stop the worker pools (the owner calls this when it has run its jobs)."""
        self.pools.close()


@dataclass
class Job:
    """Everything one run needs, each piece built once (the codec included)."""

    cfg: DictConfig
    link: Link
    device: ComputeProfile
    server: ComputeProfile
    codec: Codec
    reference: Codec | None
    task: TaskModel
    dataset: Dataset
    model_cfg: dict[str, Any]
    data_cfg: dict[str, Any]  # with the dataset's identity (an image folder's contents), for cache keys
    store: RecordStore
    measure: MeasureSettings
    pools: Pools  # the owner's measuring worker pools
    runtime: RuntimeSettings
    torch_device: torch.device  # runtime.device resolved: where the task model and codec networks run
    loader_workers: int  # data-loading processes of a single-process measurement


def _node(cfg: DictConfig, key: str) -> dict[str, Any]:
    return OmegaConf.to_container(cfg[key], resolve=True)  # type: ignore[return-value]


def codec_from_config(codec_cfg: dict[str, Any], for_model: str | None = None) -> Codec:
    """``codec: {name: ..., option: ...}`` -> the codec (its constructor checks the options);
    ``for_model``: the task model's name, so the zoo picks weights trained for it."""
    if "name" not in codec_cfg:
        raise ConfigError("codec.name is missing")
    return create_codec(codec_cfg["name"], for_model=for_model, **{k: v for k, v in codec_cfg.items() if k != "name"})


def measure_settings(cfg: DictConfig) -> MeasureSettings:
    return build(MeasureSettings, _node(cfg, "measure"), "measure")


def job_runtime(cfg: DictConfig, measure: MeasureSettings) -> tuple[RuntimeSettings, torch.device]:
    """``runtime.*`` checked and the device resolved (one line if the GPU asked for is not there);
    a CPU clock cannot see GPU work, so ``measure.clock=cpu`` with a GPU is refused."""
    runtime = runtime_settings(_node(cfg, "runtime") if "runtime" in cfg else {})
    device = resolve_device(runtime.device)
    if device.type != "cpu" and measure.clock == "cpu":
        raise ConfigError(f"measure.clock=cpu counts this process's CPU seconds and cannot time GPU work; with "
                          f"runtime.device={runtime.device} ({device}) use measure.clock=wall, or runtime.device=cpu")
    return runtime, device


def build_job(cfg: DictConfig, loaded: Loaded) -> Job:
    """Validate everything cheap (link, profiles, measure and runtime settings, codec options) before
    the task model and data are loaded."""
    measure = measure_settings(cfg)
    runtime, torch_device = job_runtime(cfg, measure)
    link = link_from_config(_node(cfg, "bandwidth"))
    device = profile_from_config(_node(cfg, "device"), "device")
    server = profile_from_config(_node(cfg, "server"), "server")
    model_cfg, data_cfg = _node(cfg, "model"), _node(cfg, "data")
    codec = codec_from_config(_node(cfg, "codec"), for_model=model_cfg.get("name"))
    task = loaded.task_model(model_cfg, torch_device)
    dataset = loaded.dataset(data_cfg, task)
    reference = create_codec(measure.reference) if measure.reference else None
    return Job(cfg=cfg, link=link, device=device, server=server, codec=codec, reference=reference, task=task,
               dataset=dataset, model_cfg=model_cfg, data_cfg={**data_cfg, **dataset_identity(dataset)},
               store=loaded.store(measure.cache), measure=measure, pools=loaded.pools, runtime=runtime,
               torch_device=torch_device, loader_workers=loader_workers(runtime.loader_workers, torch_device))


__all__ = ["Job", "Loaded", "MeasureSettings", "build_job", "codec_from_config", "measure_settings", "job_runtime"]
