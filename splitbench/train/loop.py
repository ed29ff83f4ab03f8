"""The one training loop: every trainable codec and task model runs through :func:`run_training`.

It seeds, builds the trainer's networks (``setup``), runs Adam/AdamW with linear warm-up and
cosine decay plus the auxiliary optimiser, clips gradients, shows progress, then rounds the
exported weights through fp16 (as they ship), evaluates exactly those, and writes
``<run_dir>/<name>.pt`` with ``<run_dir>/manifest.json``. Only ``train.ship=true`` also copies the
result into the shipped set (``checkpoints/`` or ``train.ship_dir``), under the manifest lock.

Devices (``runtime.device``): the task model (``ctx.task()``) and the modules a trainer lists in
``TrainSetup.modules`` are moved to ``ctx.device`` before the optimiser exists, every batch is moved
there, and the exported weights come back to the CPU before anything is evaluated or saved, so a
checkpoint never holds GPU tensors. Batches are read by ``runtime.loader_workers`` DataLoader
processes (auto: min(4, cores - 1) on a GPU, none on the CPU); the shuffle and the augmentation
draw from the seeded generator in this process, so the batches are the same with or without them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from ..data import build_dataset
from ..errors import ConfigError
from ..paths import CHECKPOINT_DIR
from ..runtime import RuntimeSettings, loader_workers, prepare, resolve_device, runtime_settings, to_device
from ..zoo import in_memory, save_entry
from .common import cycle, loader, seed_everything, warmup_cosine
from .protocol import Trainer, TrainSetup

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class TrainContext:
    """What a trainer may use: the config, the seeded generator, data, the device, and the task model
    (lazily: building it draws from the global RNG, so each trainer builds it where its method always
    did). Trainers build their networks on ``device`` (``TrainSetup.modules`` are moved there anyway)."""

    def __init__(self, cfg: Any, generator: torch.Generator, device: torch.device | str = "cpu",
                 workers: int = 0) -> None:
        self.cfg = cfg
        self.generator = generator
        self.device = torch.device(device)
        self.loader_workers = int(workers)
        self.seed = int(cfg.train.seed)
        self.max_steps = None if cfg.train.get("max_steps") is None else int(cfg.train.max_steps)
        self._task: Any = None
        self._train_set: Any = None

    def steps(self, default: int) -> int:
        """``train.max_steps`` when set (smoke runs), else the trainer's own count."""
        return self.max_steps if self.max_steps is not None else int(default)

    def task(self) -> Any:
        """The frozen server task model (``model=...``)."""
        if self._task is None:
            from ..models import build_model

            self._task = build_model(OmegaConf.to_container(self.cfg.model, resolve=True)).to(self.device)
        return self._task

    def _dataset(self, data: Any, split: str | None = None) -> Any:
        """Datasets that follow the model (image folders: its input size, channels, classes) get it."""
        import inspect

        from ..data import DATASETS

        name = data["name"]
        takes_model = name in DATASETS and "model" in inspect.signature(DATASETS.get(name)).parameters
        return build_dataset(data, split=split, model=self.task() if takes_model else None)

    @property
    def train_set(self) -> Any:
        if self._train_set is None:
            self._train_set = self._dataset(self.cfg.data, split="train")
        return self._train_set

    def test_set(self, limit: int | None = None) -> Any:
        """The evaluation split the benchmark reads: the data config's own ``split`` (fashion_mnist and
        photos: test; an image folder: val, so an ImageNet root with train/ and val/ works), never train."""
        data = OmegaConf.to_container(self.cfg.data, resolve=True)
        if data.get("split") in (None, "train"):
            data["split"] = "test"
        if limit:
            data["limit"] = int(limit)
        return self._dataset(data)

    def train_loader(self, batch_size: int) -> Any:
        return loader(self.train_set, int(batch_size), shuffle=True, generator=self.generator,
                      workers=self.loader_workers, pin_memory=self.device.type == "cuda")


def make_trainer(cfg: Any) -> Trainer:
    """The task model's trainer without ``codec=``, else the codec class's ``trainer(cfg)``."""
    if cfg.get("codec") is None:
        from .task_model import TaskModelTrainer

        return TaskModelTrainer(cfg)
    from ..codecs import CODECS, list_codecs

    trainable = [n for n in list_codecs() if hasattr(CODECS.get(n), "trainer")]
    cls = CODECS.get(cfg.codec.name)
    if not hasattr(cls, "trainer"):
        raise ConfigError(f"codec {cfg.codec.name!r} has nothing to train; trainable codecs: "
                          f"{', '.join(trainable) or '(none)'}")
    return cls.trainer(cfg)  # type: ignore[attr-defined]


def _optimise(trainer: Trainer, setup: TrainSetup, ctx: TrainContext, desc: str) -> int:
    if setup.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer {setup.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    for module in setup.modules:  # before the optimisers exist (Module.to keeps the Parameter objects)
        module.to(ctx.device)
    opt = OPTIMIZERS[setup.optimizer](setup.params, lr=setup.lr)
    aux_opt = torch.optim.Adam(setup.aux_params, lr=setup.aux_lr) if setup.aux_params else None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, setup.steps, setup.warmup))
    clipped = [p for group in setup.params for p in group["params"]]
    batches = setup.batches if setup.batches is not None else cycle(ctx.train_loader(setup.batch_size))
    cuda = ctx.device.type == "cuda"
    for module in setup.modules:
        module.train()
    step = 0
    with tqdm(total=setup.steps, desc=desc, unit="step", dynamic_ncols=True, mininterval=2) as bar:
        while step < setup.steps:
            out = trainer.training_step(to_device(next(batches), ctx.device, non_blocking=cuda))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if setup.clip:
                torch.nn.utils.clip_grad_norm_(clipped, float(setup.clip))
            opt.step()
            sched.step()
            aux = trainer.aux_loss() if aux_opt is not None else None
            if aux is not None and aux_opt is not None:
                aux_opt.zero_grad(set_to_none=True)
                aux.backward()
                aux_opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in out.logs.items()}, refresh=False)
    for module in setup.modules:
        module.eval()
    return step


def run_dir_of(cfg: Any) -> Path:
    """``train.run_dir`` when set, else Hydra's run directory (results/train/<time>)."""
    if cfg.train.get("run_dir"):
        return Path(cfg.train.run_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def train_runtime(cfg: Any) -> tuple[RuntimeSettings, torch.device]:
    """``runtime.*`` of a training config, the device resolved (one line if the GPU is not there)."""
    node = OmegaConf.to_container(cfg.runtime, resolve=True) if cfg.get("runtime") is not None else {}
    runtime = runtime_settings(node)
    return runtime, resolve_device(runtime.device)


def run_training(cfg: Any, command: str) -> dict[str, Any]:
    """Train what ``cfg`` names; return the manifest entry written into the run directory."""
    runtime, device = train_runtime(cfg)
    prepare(device)
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    trainer = make_trainer(cfg)  # checks every setting before any work
    ctx = TrainContext(cfg, seed_everything(int(cfg.train.seed)), device,
                       loader_workers(runtime.loader_workers, device))
    start, cpu0 = time.time(), time.process_time()
    setup = trainer.setup(ctx)
    what = cfg.codec.name if cfg.get("codec") is not None else cfg.model.name
    steps = _optimise(trainer, setup, ctx, f"train {what}")
    name, meta = trainer.describe(ctx)
    name = cfg.train.get("save_as") or name
    minutes, cpu = (time.time() - start) / 60, (time.process_time() - cpu0) / 60

    state = {k: v.detach().cpu() for k, v in trainer.exported_state().items()}  # checkpoints hold CPU tensors
    rounded = {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}  # fp16 ships: evaluate that
    t0 = time.time()
    metrics = trainer.evaluate(in_memory(rounded, name, meta.get("arch")), ctx)
    meta = {**meta, "command": command, "metrics": metrics, "steps": steps, "seed": ctx.seed,
            "train": getattr(trainer, "settings", {}), "train_minutes_2cpu": round(minutes, 1),
            "train_cpu_minutes": round(cpu, 1), "eval_minutes": round((time.time() - t0) / 60, 1),
            "train_threads": torch.get_num_threads(), "train_device": str(device)}
    run_dir = run_dir_of(cfg)
    entry = save_entry(name, state, meta, directory=run_dir)
    print(f"{name}: {', '.join(f'{k} {v}' for k, v in metrics.items() if not isinstance(v, dict))} after "
          f"{steps} steps ({minutes:.1f} min); wrote {run_dir / entry['file']} sha256 {entry['sha256'][:12]}",
          flush=True)
    if cfg.train.get("ship"):
        ship_dir = Path(cfg.train.ship_dir) if cfg.train.get("ship_dir") else CHECKPOINT_DIR
        shipped = save_entry(name, state, meta, directory=ship_dir)
        print(f"shipped {ship_dir / shipped['file']} with its manifest entry", flush=True)
    return entry
