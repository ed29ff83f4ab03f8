"""Parallel measurement inside one run: the dataset's chunks are shared between this process and
worker processes, and the records are merged back in dataset order.

Workers are *spawned* (a fresh interpreter: forking a process whose OpenMP pool is running can
hang the child, and CUDA cannot be used in a forked child), each sets its torch threads, builds the
task model (on the parent's device), dataset and codec once from their configs, warms up on the dataset's first batch like a single process does, then pulls chunk
numbers from a shared counter until none are left. The parent measures chunks too while workers
start, so worker start-up (seconds) never idles a core. Chunks start at multiples of the batch
size, so every batch, and therefore every byte, prediction and FLOP count, is the one a single
process produces. A pool outlives one measurement (the reference and the codec of a run, the jobs
of a basic-launcher sweep share it) and is shut down at exit. A worker's error is re-raised in the
parent as the same one-line SplitbenchError; a dead worker is an error, never a silent gap.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
from typing import Any, Callable

import pandas as pd

from . import errors
from .errors import SplitbenchError



def chunks_for(n: int, workers: int, batch_size: int) -> list[tuple[int, int]]:
    """~8 chunks per process (balances a late-starting worker), each a multiple of batch_size."""
    size = max(batch_size, -(-n // (8 * workers)))
    size = -(-size // batch_size) * batch_size
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _one_line(err: BaseException) -> tuple[str, str]:
    name = type(err).__name__
    return (name if isinstance(err, SplitbenchError) else "", str(err).strip().splitlines()[0] if str(err) else name)


def _take(lock: Any, job: Any, nxt: Any, total: Any, job_id: int) -> int | None:
    with lock:
        if job.value != job_id or nxt.value >= total.value:
            return None
        nxt.value += 1
        return nxt.value - 1


def _worker(model_cfg: dict, data_cfg: dict, threads: int | None, clock: str, batch_size: int, device: str,
            inbox: Any, results: Any, shared: tuple, parent: int) -> None:
    """A worker process's life: build once, then measure chunks of each announced job."""
    import torch

    from .codecs import create_codec
    from .job import Loaded
    from .measure import Measurer, records_key
    from .runtime import prepare

    if threads:
        torch.set_num_threads(threads)
    lock, job, nxt, total = shared
    try:
        prepare(device)
        loaded = Loaded()  # the same builders as the parent's job (splitbench.job)
        task = loaded.task_model(model_cfg, device)
        dataset = loaded.dataset(data_cfg, task)
    except BaseException as err:  # reported on the first job
        setup_error: tuple[str, str] | None = _one_line(err)
    else:
        setup_error = None
    measurers: dict[str, Measurer] = {}
    while True:
        msg = inbox.get()
        if msg is None or os.getppid() != parent:
            return
        job_id, name, options, key, chunks = msg
        try:
            if setup_error:
                raise SplitbenchError(setup_error[1])
            if key not in measurers:
                codec = create_codec(name, for_model=model_cfg.get("name"), **options)
                if records_key(codec, task, data_cfg, batch_size, clock, threads) != key:
                    raise SplitbenchError(f"measurement worker built a different {name} codec than the parent "
                                          f"(options or checkpoint changed during the run)")
                measurers[key] = Measurer(codec, task, dataset, batch_size, clock)
            while (i := _take(lock, job, nxt, total, job_id)) is not None:
                if os.getppid() != parent:
                    return
                results.put((job_id, i, pd.DataFrame(measurers[key].records(*chunks[i]))))
        except BaseException as err:
            results.put((job_id, -1, _one_line(err)))


class Pool:
    """``workers - 1`` spawned processes plus this one, for one (model, data, threads, clock, batch, device)."""

    def __init__(self, model_cfg: dict, data_cfg: dict, workers: int, threads: int | None, clock: str,
                 batch_size: int, device: str = "cpu") -> None:
        ctx = mp.get_context("spawn")
        self.lock = ctx.Lock()
        self.job, self.nxt, self.total = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False), \
            ctx.Value("q", 0, lock=False)
        self.results = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(workers - 1)]
        self.procs = [ctx.Process(target=_worker, daemon=True, name=f"splitbench-measure-{i + 1}",
                                  args=(model_cfg, data_cfg, threads, clock, batch_size, device, inbox, self.results,
                                        (self.lock, self.job, self.nxt, self.total), os.getpid()))
                      for i, inbox in enumerate(self.inboxes)]
        for p in self.procs:
            p.start()
        self.job_id = 0

    @property
    def size(self) -> int:
        return len(self.procs) + 1

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.procs)

    def run(self, name: str, options: dict, key: str, chunks: list[tuple[int, int]],
            measure_chunk: Callable[[int, int], pd.DataFrame], on_chunk: Callable[[int], None]) -> pd.DataFrame:
        """Measure every chunk (here and in the workers); the records in dataset order."""
        with self.lock:
            self.job_id += 1
            self.job.value, self.nxt.value, self.total.value = self.job_id, 0, len(chunks)
        for inbox in self.inboxes:
            inbox.put((self.job_id, name, options, key, chunks))
        done: dict[int, pd.DataFrame] = {}
        while (i := _take(self.lock, self.job, self.nxt, self.total, self.job_id)) is not None:
            done[i] = measure_chunk(*chunks[i])
            on_chunk(chunks[i][1] - chunks[i][0])
            self._collect(done, chunks, block=False, on_chunk=on_chunk)
        while len(done) < len(chunks):
            self._collect(done, chunks, block=True, on_chunk=on_chunk)
        return pd.concat([done[i] for i in range(len(chunks))], ignore_index=True)

    def _collect(self, done: dict, chunks: list, block: bool, on_chunk: Callable[[int], None]) -> None:
        while True:
            try:
                job_id, i, value = self.results.get(timeout=1.0) if block else self.results.get_nowait()
            except queue.Empty:
                if block and self.alive() < len(self.procs):
                    dead = [p for p in self.procs if not p.is_alive()]
                    raise SplitbenchError(f"measurement worker {dead[0].name} died (exit code {dead[0].exitcode}); "
                                          f"try measure.workers=1")
                return
            if job_id != self.job_id:
                continue  # left over from an earlier job that failed
            if i < 0:
                kind, message = value
                raise getattr(errors, kind, SplitbenchError)(message if kind else f"measurement worker: {message}")
            done[i] = value
            on_chunk(chunks[i][1] - chunks[i][0])
            if block:
                return

    def close(self) -> None:
        for inbox in self.inboxes:
            try:
                inbox.put(None)
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()


class Pools:
    """The measuring worker pools of one owner (``job.Loaded``), reused across its measurements.

    A pool outlives a single measurement (the reference and the codec of a run, the jobs of a
    basic-launcher sweep share one), so its owner, not a module global, keeps it and closes it.
    """

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}

    def get(self, model_cfg: dict, data_cfg: dict, workers: int, threads: int | None, clock: str,
            batch_size: int, device: str = "cpu") -> Pool:
        """A live pool for these settings (a pool with a dead worker is replaced)."""
        import json

        key = json.dumps([model_cfg, data_cfg, workers, threads, clock, batch_size, device], sort_keys=True,
                         default=str)
        pool = self._pools.get(key)
        if pool is not None and pool.alive() < len(pool.procs):
            self.discard(pool)
            pool = None
        if pool is None:
            pool = self._pools[key] = Pool(model_cfg, data_cfg, workers, threads, clock, batch_size, device)
        return pool

    def discard(self, pool: Pool) -> None:
        """Stop a pool (after an error its workers may still be on the failed job)."""
        for k, p in list(self._pools.items()):
            if p is pool:
                del self._pools[k]
        for p in pool.procs:
            p.terminate()
        for p in pool.procs:
            p.join()

    def close(self) -> None:
        for pool in list(self._pools.values()):
            pool.close()
        self._pools.clear()
