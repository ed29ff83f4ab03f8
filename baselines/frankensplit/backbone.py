"""FrankenSplit on any splittable timm backbone: derive the arch from (model, split), check a model fits.

The shipped points are built for the 28x28 grey ViT (model.py's default ``Arch``); everything here
is for other server models. The arch follows the backbone's split (``splitbench.models.split``):
the split's stride r gives ceil(log2 r) stride-2 encoder blocks (the paper: 3 for stride 8), so the
latent grid has the feature map's (or the ViT patch grid's) size; the decoder predicts the split's
features, the frozen ``SplitBackbone.tail`` finishes. The arch travels inside the weights (a JSON
byte tensor under ``ARCH_KEY``), so a user's checkpoint file alone rebuilds and strictly loads it.
"""
from __future__ import annotations

import json
import math
from typing import Any

import torch

from splitbench.errors import CheckpointError, ConfigError
from splitbench.models.split import SplitBackbone

from .model import Arch
from .wire import NAME

ARCH_KEY = "frankensplit_arch_json"
ARCH_OPTIONS = ("channels", "latent", "hyper_latent", "decoder_blocks", "latent_block")


def feature_name(net: torch.nn.Module, split: int | str) -> str:
    """A timm feature name for ``split``: a name as given; an integer k on a ViT means after k blocks."""
    if isinstance(split, str):
        return split
    if type(net).__name__ == "VisionTransformer" and 1 <= split <= len(net.blocks):
        return f"blocks.{split - 1}"
    names = ", ".join(str(f["module"]) for f in getattr(net, "feature_info", []))
    raise ConfigError(f"codec.split={split} for {NAME} on {type(net).__name__} must be a feature name"
                      f"{': ' + names if names else ''}")


def same_split(asked: int | str, stored: str) -> bool:
    """``asked`` names ``stored``: the same feature name, or a ViT block count k for ``blocks.{k-1}``."""
    return asked == stored or (isinstance(asked, int) and stored == f"blocks.{asked - 1}")


def split_of(task: Any, split: int | str) -> SplitBackbone:
    """The task model cut at ``split``; one-line ConfigError when it cannot be."""
    net = getattr(task, "net", None)
    if net is None:
        raise ConfigError(f"{NAME} needs a timm backbone as the server model; {getattr(task, 'name', task)!r} has none")
    return SplitBackbone(net, feature_name(net, split))


def derive_arch(task: Any, prior: str, split: int | str, options: dict[str, Any]) -> Arch:
    """The arch for ``task`` cut at ``split``; ``options`` (codec.arch) may set widths, not shapes."""
    cut = split_of(task, split)
    input_size = tuple(int(v) for v in task.input_size)
    feature = cut.feature_shape(input_size)
    depth = max(1, math.ceil(math.log2(cut.point.reduction)))
    channels = options.get("channels") or [min(32 * 2 ** i, 128) for i in range(depth)]
    if not isinstance(channels, (list, tuple)) or len(channels) != depth:
        raise ConfigError(f"codec.arch.channels for {NAME} at {cut.point.name} (stride {cut.point.reduction}) "
                          f"needs {depth} widths, one per stride-2 block; got {channels!r}")
    given = {k: options[k] for k in ARCH_OPTIONS if k != "channels" and options.get(k) is not None}
    latent_block = given.pop("latent_block", True)
    if not isinstance(latent_block, bool):
        raise ConfigError(f"codec.arch.latent_block for {NAME} must be true or false, got {latent_block!r}")
    for key, value in [*(("channels", c) for c in channels), *given.items()]:
        low = 0 if key == "decoder_blocks" else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 4096:
            raise ConfigError(f"codec.arch.{key} for {NAME} must be integers in [{low}, 4096], got {value!r}")
    latent = given.get("latent", Arch().latent)
    if not latent_block and channels[-1] != latent:
        raise ConfigError(f"codec.arch.latent_block=false for {NAME}: the last stride-2 block outputs the latent, so "
                          f"codec.arch.channels[-1] ({channels[-1]}) must equal codec.arch.latent ({latent})")
    tokens = len(feature) == 2
    dim = feature[1] if tokens else feature[0]
    heads = dim // 64 if dim % 64 == 0 else 1
    arch = Arch.from_dict({**Arch().to_dict(), **given, "latent_block": latent_block, "channels": list(channels),
                           "prior": prior,
                           "split": cut.point.name, "backbone": type(cut.net).__name__, "feature": list(feature),
                           "input_size": list(input_size), "tokens": feature[0] if tokens else 0, "dim": dim,
                           "heads": heads, "grid": 0})
    check_generic_server(arch, task)
    return arch


def check_generic_server(a: Arch, task: Any) -> None:
    """The bound model must be the backbone class, split, input and feature shape ``a`` was built for."""
    net = getattr(task, "net", None)
    kind = type(net).__name__
    if kind != a.backbone:
        raise ConfigError(f"{NAME} checkpoint was trained for a {a.backbone} split at {a.split}; model "
                          f"{getattr(task, 'name', task)!r} is a {kind}")
    cut = split_of(task, a.split)
    size = tuple(int(v) for v in task.input_size)
    feature = cut.feature_shape(size)
    if size != a.input_size or feature != a.feature:
        raise ConfigError(f"{NAME} checkpoint was trained for {a.backbone} inputs {list(a.input_size)} giving "
                          f"features {list(a.feature)} at {a.split}; model {task.name!r} takes {list(size)} "
                          f"and gives {list(feature)}")
    h, w = a.hw
    if len(feature) == 3 and feature[1:] != (h, w):
        raise ConfigError(f"{NAME} at {a.split} needs the input to halve to the {feature[1]}x{feature[2]} feature "
                          f"map in {len(a.channels)} stride-2 blocks; {size[1]}x{size[2]} gives {h}x{w}")
    if len(feature) == 2:
        grid = tuple(net.patch_embed.grid_size)
        if net.num_prefix_tokens != 1 or grid != (h, w) or feature[0] != 1 + h * w:
            raise ConfigError(f"{NAME} needs a ViT with one class token and a {h}x{w} patch grid at this input; "
                              f"model {task.name!r} has {net.num_prefix_tokens} prefix token(s), grid "
                              f"{grid[0]}x{grid[1]}")


def arch_tensor(a: Arch) -> torch.Tensor:
    """The arch as a uint8 tensor of JSON text: stored with the weights (data, never code)."""
    return torch.tensor(list(json.dumps(a.to_dict(), sort_keys=True).encode()), dtype=torch.uint8)


def arch_in_state(state: dict[str, torch.Tensor], source: str) -> Arch | None:
    """The arch stored in ``state`` (None for the shipped layout, which keeps it in the manifest)."""
    raw = state.get(ARCH_KEY)
    if raw is None:
        return None
    try:
        return Arch.from_dict(json.loads(bytes(raw.to(torch.uint8).tolist()).decode()))
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source} has a malformed {ARCH_KEY} entry ({err})") from None


__all__ = ["ARCH_KEY", "derive_arch", "same_split", "check_generic_server", "split_of", "feature_name", "arch_tensor",
           "arch_in_state"]
