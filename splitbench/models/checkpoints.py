"""Shipped checkpoints and their manifest.

``checkpoints/manifest.json`` has one entry per shipped file: file, sha256, size, the command that
reproduces it, the data it saw and its measured metrics. Loading checks the hash first and always
uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..paths import CHECKPOINT_DIR

MANIFEST_NAME = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(directory: Path = CHECKPOINT_DIR) -> dict[str, dict[str, Any]]:
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); restore it from git") from None


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it is corrupt") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}


def load_shipped(name: str, directory: Path = CHECKPOINT_DIR) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a manifest entry after checking its sha256. Returns (state_dict, entry)."""
    manifest = load_manifest(directory)
    if name not in manifest:
        raise CheckpointError(f"no shipped checkpoint named {name!r}; shipped: "
                              f"{', '.join(sorted(manifest)) or '(none)'}")
    entry = manifest[name]
    path = Path(directory) / entry["file"]
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} for {name!r} is missing; restore it from git or "
                              f"reproduce it with: {entry.get('command', '(no command recorded)')}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (manifest {entry['sha256'][:12]}..., "
                              f"file {digest[:12]}...): it is corrupt or was replaced")
    return _read_state_dict(path), entry


def load_user_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A user's checkpoint by path (a state dict, or a dict with 'state_dict'/'model')."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    state = _read_state_dict(path)
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            return state[key]
    return state


def shipped_sha(name: str, directory: Path = CHECKPOINT_DIR) -> str | None:
    return load_manifest(directory).get(name, {}).get("sha256")


def save_shipped(name: str, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                 directory: Path = CHECKPOINT_DIR, half: bool = True) -> dict[str, Any]:
    """Write ``<name>.pt`` (fp16 floats by default) and its manifest entry, both atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
             for k, v in state_dict.items()}
    path = directory / f"{name}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)
    entry = {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size, **meta}
    with open(directory / ".manifest.lock", "w") as lock:  # several trainings may finish at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(directory)
        manifest[name] = entry
        _write_json_atomic(directory / MANIFEST_NAME, manifest)
    return entry
