"""Shared fixtures. Tests use a private cache directory so they neither read nor pollute a user's."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_CACHE = tempfile.mkdtemp(prefix="splitbench-test-cache-")
os.environ["SPLITBENCH_CACHE"] = _CACHE


@pytest.fixture(scope="session")
def task_model():
    """The shipped server ViT (checked against its manifest hash)."""
    from splitbench.models import build_model

    return build_model({"name": "vit_fmnist", "checkpoint": None, "pretrained": True})


@pytest.fixture(scope="session")
def test_images():
    """The first 16 Fashion-MNIST test images (uint8 N,1,28,28) and labels."""
    import torch

    from splitbench.data import build_dataset

    ds = build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": 16})
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    return images, labels


def run_cli(*args: str, module: str = "splitbench", timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` from the repo root, as a user would."""
    env = dict(os.environ, SPLITBENCH_CACHE=_CACHE, HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``python -m splitbench args`` in this process (the command-line path without a new
    interpreter): returns (exit status, stdout, stderr). ``main``: another command's entry point,
    e.g. ``splitbench.train.__main__.cli`` for ``python -m splitbench.train``."""
    from splitbench import __main__ as entry

    def run(*args: str, main=None) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["splitbench", *args])
        capsys.readouterr()
        try:
            (main or entry.main)()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
