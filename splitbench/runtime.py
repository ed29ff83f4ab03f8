"""Where the model stages run: ``runtime.device=auto|cpu|cuda|cuda:N`` (and data-loading workers).

One declaration (:class:`RuntimeSettings`, the ``runtime:`` node of conf/config.yaml and
conf/train.yaml) and one resolver (:func:`resolve_device`) serve measurement, training and the
edge server. ``auto`` is the first CUDA GPU when one is visible, else the CPU; asking for a GPU
that is not there is a one-line ConfigError naming what exists, before anything is loaded.

Only *model stages* move to the device (the task model; each codec's networks through
``Codec.to``). Entropy coding never does: the codec protocol hands ``encode`` and takes from
``decode`` CPU tensors only (:func:`check_on_cpu` holds every measurement to it), so bitstreams
do not depend on the device (see splitbench.codecs.base).

GPU availability is read with ``torch.cuda.device_count()``, which asks NVML and does not
initialise CUDA in this process, so a process that resolves ``auto`` may still fork workers.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import torch

from .conditions import cores_available
from .errors import ConfigError, SplitbenchError

#: what runtime.device accepts (cuda:N: a visible GPU's index)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
MAX_LOADER_WORKERS = 4  # beyond this, a batch-1 measurement or a small model gains nothing


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """The declared ``runtime.*`` options (conf/config.yaml and conf/train.yaml document each)."""

    device: str = "auto"                  # auto | cpu | cuda | cuda:N (resolve_device checks)
    loader_workers: int | str | None = "auto"  # data-loading processes; auto: see loader_workers()


def runtime_settings(node: Any) -> RuntimeSettings:
    """``runtime:`` config node -> checked settings (the device resolved once: fail fast)."""
    from .options import build

    settings = build(RuntimeSettings, dict(node or {}), "runtime")
    resolve_device(settings.device)
    loader_workers(settings.loader_workers, torch.device("cpu"))
    return settings


def gpu_count() -> int:
    """CUDA GPUs this process can see (0 for a CPU-only torch build); does not initialise CUDA."""
    if not torch.backends.cuda.is_built():
        return 0
    return max(0, int(torch.cuda.device_count()))


def _valid_here(count: int) -> str:
    gpus = ["cuda", *(f"cuda:{i}" for i in range(count))] if count else []
    return ", ".join(["auto", "cpu", *gpus])


def resolve_device(text: str | torch.device | None) -> torch.device:
    """``auto`` -> ``cuda:0`` when a GPU is visible, else ``cpu``; ``cuda`` -> ``cuda:0``;
    ``cuda:N`` checked against the visible GPUs. ConfigError (one line) otherwise."""
    if isinstance(text, torch.device):
        text = str(text)
    value = "auto" if text is None else str(text).strip().lower()
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if value not in ("auto", "cpu") and match is None:
        raise ConfigError(f"unknown runtime.device {text!r}; valid devices: {', '.join(DEVICE_CHOICES)} "
                          f"(N: a GPU index)")
    count = gpu_count()
    if value == "cpu" or (value == "auto" and not count):
        return torch.device("cpu")
    if value == "auto":
        return torch.device("cuda", 0)
    index = int(match.group(1) or 0) if match else 0
    if not count:
        why = "this torch build has no CUDA support" if not torch.backends.cuda.is_built() else \
            "no CUDA GPU is visible (torch.cuda.device_count() is 0)"
        raise ConfigError(f"runtime.device={value} but {why}; valid devices here: {_valid_here(0)}")
    if index >= count:
        raise ConfigError(f"runtime.device={value} but this machine has {count} CUDA GPU{'s' if count > 1 else ''} "
                          f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''}); valid devices here: "
                          f"{_valid_here(count)}")
    return torch.device("cuda", index)


def device_label(device: torch.device | str) -> str:
    """``cpu``, or ``cuda:N`` with the GPU's name (part of the record cache key and the conditions)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else 0
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def prepare(device: torch.device | str) -> None:
    """Make a CUDA device compute what float32 means: no TF32 in matmuls and convolutions (cuDNN's
    default is TF32, ~1e-3 relative error), deterministic cuDNN algorithms, and ``device`` current.
    Nothing changes on the CPU, so CPU bytes and timings stay exactly as before."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.cuda.set_device(device.index if device.index is not None else 0)


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What a stage timer calls before reading the clock: waits for queued CUDA work (a kernel
    launch returns before the GPU is done), nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's first parameter (or buffer) lives; CPU for a module with neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def loader_workers(setting: int | str | None, device: torch.device | str) -> int:
    """``runtime.loader_workers``: a count >= 0, or auto/null: ``min(4, cores - 1)`` when the model
    runs on a GPU (decoding and resizing images would otherwise idle it), 0 on the CPU (loader
    processes would compete with the timed or trained model for the same cores)."""
    if setting in (None, "auto"):
        return min(MAX_LOADER_WORKERS, max(0, cores_available() - 1)) if torch.device(device).type == "cuda" else 0
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ConfigError(f"runtime.loader_workers must be a number >= 0 or auto, got {setting!r}")
    return setting


def to_device(value: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Tensors inside ``value`` (a tensor, or lists/tuples/dicts of them) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    return value


def off_cpu(value: Any) -> torch.device | None:
    """The device of the first tensor in ``value`` (tensors, lists, tuples, dicts, dataclasses)
    that is not on the CPU; None when every tensor is on the CPU."""
    if isinstance(value, torch.Tensor):
        return None if value.device.type == "cpu" else value.device
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = off_cpu(item)
            if found is not None:
                return found
    return None


def check_on_cpu(value: Any, codec: str, stage: str) -> None:
    """The codec protocol's wire side: what ``encode`` takes and ``decode`` returns is on the CPU."""
    found = off_cpu(value)
    if found is not None:
        raise SplitbenchError(f"codec {codec!r}: {stage} returned a tensor on {found}; the entropy-coding side of a "
                          f"codec takes and returns CPU tensors (move model outputs with .cpu() in device_forward)")


__all__ = ["RuntimeSettings", "DEVICE_CHOICES", "runtime_settings", "resolve_device", "gpu_count", "device_label",
           "prepare", "synchronizer", "module_device", "loader_workers", "to_device", "check_on_cpu", "off_cpu"]
