"""Training: one protocol (protocol.py), one loop (loop.py), shared pieces (common.py).

``python -m splitbench.train`` is the entry point (``__main__.py``); a trainable codec declares
``trainer(cfg)`` returning a :class:`Trainer`; the task models' trainer is task_model.py.
"""
from .common import augment, cycle, evaluate, evaluate_codec, loader, seed_everything, warmup_cosine
from .loop import TrainContext, run_training
from .protocol import Step, Trainer, TrainSetup, codec_options, settings

__all__ = ["Trainer", "TrainSetup", "Step", "TrainContext", "run_training", "settings", "codec_options",
           "evaluate", "evaluate_codec", "augment", "cycle", "loader", "seed_everything", "warmup_cosine"]
