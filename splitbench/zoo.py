"""The weights zoo: one table of shipped checkpoints and one resolver for every codec and task model.

Modelled on CompressAI's zoo (one table, one loader) and timm's registered metadata, keeping what
splitbench adds: a sha256 check on every shipped load and full provenance per entry. The table is
``checkpoints/manifest.json``; each entry has the file, its sha256 and size, and uniform metadata:

* ``kind``: ``codec`` or ``task_model``; ``family``: who loads it (``elic``, ``tofc``, ``vit_fmnist``...)
* ``point``: the options that pick it within the family (``{"lmbda": 0.0067}``; ``{}`` for a single one)
* ``arch`` (the architecture it was trained with), ``command`` (reproduces it), ``data``, ``metrics``.

``resolve(family, point=...)`` finds the entry whose point equals the request, ``resolve(family,
path=...)`` reads a user's file, ``resolve(name=...)`` a shipped entry by name; all return a
:class:`Weights` (a float32 state dict, its fingerprint, the trained arch, the entry, and a source
string for messages). Loading is always ``torch.load(..., weights_only=True)``: a checkpoint is
data, never code. Every error a missing, damaged or ill-fitting checkpoint raises is worded here.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointError
from .paths import CHECKPOINT_DIR

MANIFEST_NAME = "manifest.json"
KINDS = ("codec", "task_model")


@dataclass
class Weights:
    """A verified state dict and where it came from.

    ``fingerprint`` (the file's sha256, or a tag for in-memory weights) goes into every record
    cache key; ``arch`` is the architecture the manifest says the weights were trained with (None
    for a user's file: the loader reads it from the weights or the config); ``source`` names the
    weights in error messages.
    """

    state: dict[str, torch.Tensor]
    fingerprint: str
    source: str
    arch: dict[str, Any] | None = None
    entry: dict[str, Any] | None = None
    name: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def misfit(self, target: str, detail: str) -> CheckpointError:
        """The one wording for weights that do not fit the network built for them."""
        first = str(detail).splitlines()[0] if str(detail) else ""
        return CheckpointError(f"{self.source} does not fit {target}: {first}")

    def check_arch(self, wanted: Mapping[str, Any], keys: tuple[str, ...] | None = None, *,
                   family: str = "") -> None:
        """Shipped weights must match the architecture the config asks for (on ``keys``, default all)."""
        if self.arch is None:
            return
        keys = tuple(keys) if keys is not None else tuple(wanted)
        trained = {k: self.arch.get(k) for k in keys}
        asked = {k: wanted.get(k) for k in keys}
        if trained != asked:
            raise CheckpointError(f"{self.source} was trained with arch {trained}, the config asks for {asked}; "
                                  f"use the shipped values or train your own (python -m splitbench.train "
                                  f"codec={family} ...)")


# -- the table ------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(directory: Path = CHECKPOINT_DIR) -> dict[str, dict[str, Any]]:
    """The zoo table of ``directory`` (empty when it has none)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); restore it from git") from None


def shipped(family: str, directory: Path = CHECKPOINT_DIR, **match: Any) -> dict[str, dict[str, Any]]:
    """{name: entry} of the shipped checkpoints of ``family`` whose point has the ``match`` values."""
    return {name: e for name, e in sorted(load_manifest(directory).items())
            if e.get("family") == family and all(e.get("point", {}).get(k) == v for k, v in match.items())}


def point_text(point: Mapping[str, Any]) -> str:
    """``lmbda=0.0067 split=1``: how messages name an operating point."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) or "(default)"


# -- resolving --------------------------------------------------------------------------------------
def resolve(family: str | None = None, *, point: Mapping[str, Any] | None = None, path: str | Path | None = None,
            name: str | None = None, directory: Path = CHECKPOINT_DIR, train_hint: str = "",
            model: str | None = None) -> Weights:
    """A user's file (``path``), a shipped entry by ``name``, or the shipped entry of ``family`` at ``point``.

    ``model`` is the task model the weights are for: a point trained for a named model (its point
    carries ``model``, e.g. the photo-trained ``tf_efficientnet_lite0`` points) is chosen for that
    model only; entries without a model (the embedded Fashion-MNIST suite's) serve any model whose
    own point is missing, and the codec's bind() checks they fit. ``train_hint`` is the override
    text that would train the missing point (e.g. ``codec.lmbda=0.01``), quoted in the error.
    """
    if path is not None:
        return _from_path(Path(path))
    manifest = load_manifest(directory)
    if name is None:
        point = dict(point or {})
        model = point.pop("model", model)  # an entry's own point names its model
        found = find_point(manifest, family or "", point, model)
        if not found:
            raise _no_point(family or "", point, manifest, train_hint, model)
        name = found[0]
    elif name not in manifest:
        raise CheckpointError(f"no shipped checkpoint named {name!r}; shipped: {', '.join(sorted(manifest)) or '(none)'}")
    return _from_entry(name, manifest[name], Path(directory))


def find_point(manifest: Mapping[str, Any], family: str, point: Mapping[str, Any], model: str | None) -> list[str]:
    """Names of ``family``'s entries at ``point``, best first: the ones trained for ``model``, then
    the ones trained for no named model. With no model given, a model's own entry is taken only
    when it is the one entry at that point."""
    same = [n for n, e in sorted(manifest.items()) if e.get("family") == family
            and {k: v for k, v in e.get("point", {}).items() if k != "model"} == dict(point)]
    own = [n for n in same if manifest[n]["point"].get("model") == model] if model else []
    generic = [n for n in same if "model" not in manifest[n]["point"]]
    return own + generic or ([] if model else same[:1] if len(same) == 1 else [])


def model_points_hint(family: str, model: str, directory: Path = CHECKPOINT_DIR) -> str:
    """``; shipped for <model>: codec.split=blocks.2 codec.lmbda=4,16`` (empty when none are): appended
    to a codec's error when the weights it was given do not fit a model that has its own points."""
    points = [{k: v for k, v in e["point"].items() if k != "model"} for e in shipped(family, directory).values()
              if e.get("point", {}).get("model") == model]
    if not points:
        return ""
    keys = list(points[0])
    text = " ".join(f"codec.{k}=" + ",".join(sorted({f"{p[k]:g}" if isinstance(p[k], float) else str(p[k])
                                                      for p in points}, key=lambda t: (len(t), t))) for k in keys)
    return f"; shipped for {model}: {text}"


def _no_point(family: str, point: dict[str, Any], manifest: dict[str, Any], train_hint: str,
              model: str | None = None) -> CheckpointError:
    entries = [e for e in manifest.values() if e.get("family") == family]
    mine = [e for e in entries if model and e.get("point", {}).get("model") == model]
    generic = [e for e in entries if "model" not in e.get("point", {})]
    have = [{k: v for k, v in e.get("point", {}).items() if k != "model"} for e in (mine or generic or entries)]
    label = f"{family} (for model {model})" if mine else family
    # name only the keys that vary, so the list stays readable
    varying = [k for k in point if len({json.dumps(p.get(k)) for p in have}) > 1] or list(point)
    listed = sorted({point_text({k: p.get(k) for k in varying}) for p in have})
    kind = next((e.get("kind") for e in manifest.values() if e.get("family") == family), "codec")
    how = f"model={family} ... python -m splitbench.train" if kind == "task_model" else \
        f"python -m splitbench.train codec={family} {train_hint}".rstrip()
    flag = "model.checkpoint" if kind == "task_model" else "codec.checkpoint"
    return CheckpointError(f"no shipped {label} checkpoint for {point_text(point)}; shipped: "
                           f"{'; '.join(listed) or '(none)'}; train one with: {how} or pass {flag}=PATH")


def _from_entry(name: str, entry: dict[str, Any], directory: Path) -> Weights:
    path = directory / entry["file"]
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} for {name!r} is missing; restore it from git or "
                              f"reproduce it with: {entry.get('command', '(no command recorded)')}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (manifest {entry['sha256'][:12]}..., "
                              f"file {digest[:12]}...): it is corrupt or was replaced")
    return Weights(read_state_dict(path), digest, f"shipped checkpoint {name!r}", entry.get("arch"), entry, name)


def _from_path(path: Path) -> Weights:
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    state = read_state_dict(path)
    for key in ("state_dict", "model"):  # common wrappers of training scripts
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    return Weights(state, sha256_file(path), f"checkpoint {str(path)!r}")


def in_memory(state: dict[str, torch.Tensor], tag: str, arch: dict[str, Any] | None = None) -> Weights:
    """Weights that exist only in this process (a network just trained), fingerprinted by ``tag``."""
    return Weights(dict(state), f"in-memory:{tag}", f"trained weights {tag!r}", arch)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (weights only), floats widened to float32."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it is corrupt") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}


# -- writing ----------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_entry(name: str, state_dict: dict[str, torch.Tensor], meta: dict[str, Any], directory: Path,
               half: bool = True) -> dict[str, Any]:
    """Write ``<directory>/<name>.pt`` (fp16 floats by default) and its manifest entry, atomically.

    The manifest is updated under a lock (several trainings may finish at once). Training calls
    this for its run directory, and again for ``checkpoints/`` only when asked to ship.
    """
    if meta.get("kind") not in KINDS or "family" not in meta or "point" not in meta:
        raise CheckpointError(f"manifest entry {name!r} needs kind ({', '.join(KINDS)}), family and point")
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
    with open(directory / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(directory)
        manifest[name] = entry
        _write_json_atomic(directory / MANIFEST_NAME, manifest)
    return entry


__all__ = ["Weights", "resolve", "find_point", "model_points_hint", "shipped", "in_memory", "load_manifest", "save_entry", "sha256_file",
           "read_state_dict", "point_text", "MANIFEST_NAME"]
