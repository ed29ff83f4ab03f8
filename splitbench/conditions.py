"""The conditions a timing was measured under, and whether the host was too busy to trust it.

Batch-1 stage times are only meaningful when every measuring thread has a core: with more runnable
tasks than cores, a stage's wall time measures the scheduler. So each measurement records its
threads, clock, workers, device, CPU model, cores available and load, samples how many *other* tasks are
runnable while it runs, and is flagged ``contended`` when the runnable demand (others + its own
threads) exceeds the available cores by more than ``CONTENDED_ABOVE``.
"""
from __future__ import annotations

import os
import platform
import statistics
from typing import Any

CONTENDED_ABOVE = 1.25  # runnable tasks per available core above which timings are flagged
MAX_AUTO_WORKERS = 16   # beyond this, memory bandwidth, not cores, limits a CPU measurement
MIN_SHARDED = 400       # samples below which worker start-up (seconds each) costs more than it saves


def cores_available() -> int:
    """Cores this process may run on (affinity / cgroup cpusets), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runnable_now() -> float:
    """Tasks runnable on the machine this instant (Linux /proc/loadavg; else the 1-min load)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0]


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


class Sampler:
    """Samples runnable tasks other than ours during a measurement (cheap: one small file read)."""

    def __init__(self) -> None:
        self.others: list[float] = []

    def sample(self, own: int) -> None:
        """``own``: this measurement's processes that may be runnable now (the reader is one)."""
        self.others.append(max(0.0, runnable_now() - own))

    def mean(self) -> float:
        return statistics.fmean(self.others) if self.others else 0.0


def other_load_now(samples: int = 5) -> float:
    """Median of a few instantaneous samples of runnable tasks besides this one."""
    values = []
    for _ in range(samples):
        values.append(max(0.0, runnable_now() - 1))
        os.sched_yield()
    return statistics.median(values)


def auto_workers(n_samples: int, threads: int | None) -> int:
    """Processes to measure with: one per free core (at ``threads`` each), 1 for small runs."""
    if n_samples < MIN_SHARDED:
        return 1
    free = cores_available() - round(other_load_now())
    return max(1, min(MAX_AUTO_WORKERS, free // max(1, threads or 1), n_samples // (MIN_SHARDED // 2)))


def begin(threads: int | None, clock: str, workers: int, device: str = "cpu") -> dict[str, Any]:
    """``device``: where the model stages ran (splitbench.runtime.device_label: ``cpu`` or
    ``cuda:N <GPU name>``); entropy coding always ran on ``cpu``."""
    import torch

    return {"threads": threads or torch.get_num_threads(), "threads_requested": threads, "clock": clock,
            "workers": workers, "cores": cores_available(), "cpu": cpu_model(), "device": device,
            "load_before": loadavg()}


def end(cond: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
    """Completes ``begin``'s record: load after, mean other runnable tasks, the contended flag."""
    others = round(sampler.mean(), 2)
    demand = (others + cond["workers"] * cond["threads"]) / max(1, cond["cores"])
    return {**cond, "load_after": loadavg(), "others_runnable": others, "demand_per_core": round(demand, 2),
            "contended": bool(demand > CONTENDED_ABOVE)}


def host_is_quiet(threads: int | None, workers: int) -> bool:
    """Would a measurement started now get a core per measuring thread?"""
    demand = other_load_now() + workers * (threads or 1)
    return demand / max(1, cores_available()) <= CONTENDED_ABOVE
