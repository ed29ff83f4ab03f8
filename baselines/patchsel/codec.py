"""``patchsel`` and ``local``: attention-aware patch selection with entropy-aware offloading
(Im et al., IEEE IoT-J 2024, arXiv 2404.07217), counted in real bytes.

Device: the edge ViT (``vit_edge``, same 7x7 patch grid as the server ViT) classifies the image.
If its uncertainty is below ``eta`` its answer stands and nothing is sent (``local``: always).
Otherwise the patches it attended to most (last-layer CLS attention, head mean) are kept and sent
as a compact mask plus their pixels (see wire.py); the server runs its ViT on those tokens only.

The original paper counts cost as the fraction of tokens sent with raw pixels and indices free;
here the rate is the payload's real length, and the paper's token fraction is reported beside it
(``token_cost``: kept/49 per offloaded image, 0 for a local answer).

Devices: the edge model and the server ViT run on ``runtime.device``; the edge's logits and patch
scores come back to the CPU, where the gate and the selection rule decide what is sent. Nothing is
entropy-modelled from floats on the server side: the payload carries the kept indices and their
pixels (deflate or JPEG), so it decodes the same on any device.
"""
from __future__ import annotations

import copy
import math
from typing import Annotated, Any

import numpy as np
import torch

from splitbench.codecs import Codec, Payload, register_codec
from splitbench.errors import CheckpointError, ConfigError, PayloadError
from splitbench.models import TaskModel, build_model
from splitbench.options import OneOf, Range
from splitbench.zoo import resolve

from .attention import SCORES, EdgeOutput, edge_forward
from .policy import GATES, SELECTIONS, select, uncertainty
from .server import grid_of, kept_logits
from .wire import (PIXEL_CODINGS, Grid, JpegPixels, decode_lossless, encode_lossless, mask_bytes,
                   max_payload_bytes, pack_payload, unpack_payload)


def load_edge(name: str, checkpoint: str | None) -> TaskModel:
    """The device model: a shipped name (``vit_edge``, weights from the zoo or ``checkpoint``), or any
    timm model as ``timm:<name>`` (or its bare name) with ``checkpoint=PATH`` (else hub weights)."""
    if name.startswith("timm:"):
        import timm

        name = name[len("timm:"):]
        if not timm.is_model(name):
            raise ConfigError(f"codec.edge_model='timm:{name}': timm has no model {name!r} (see timm.list_models())")
    try:
        return build_model({"name": name, "checkpoint": checkpoint, "pretrained": True})
    except CheckpointError as err:
        if checkpoint is not None or not str(err).startswith("timm model"):
            raise
        # hub weights missing: the fix is the edge's own option, not the server's model.checkpoint
        raise CheckpointError(f"edge {str(err).split('; pass ')[0]}; pass codec.edge_checkpoint=PATH (a state dict)") \
            from None


class EdgeCodec(Codec):
    """Shared device half: the edge model, loaded (and hash-checked) when the codec is created."""

    def __init__(self, edge_model: str, edge_checkpoint: str | None) -> None:
        self.edge = load_edge(edge_model, edge_checkpoint)

    def fingerprint(self) -> dict[str, Any]:
        return {"edge": self.edge.fingerprint}

    def device_modules(self) -> list[torch.nn.Module]:
        """The edge model, and a server ViT copy with fine-tuned weights when this codec holds one."""
        own = getattr(self, "server_net", None)
        task_net = getattr(getattr(self, "task", None), "net", None)
        return [self.edge, *([own] if own is not None and own is not task_net else [])]

    def check_edge_fits(self, task: TaskModel) -> None:
        """The edge model sees the server model's images and answers in its classes, or it cannot stand in."""
        edge, size = self.edge, tuple(task.input_size)
        if tuple(edge.input_size) != size or edge.num_classes != task.num_classes:
            raise ConfigError(f"{self.name} needs an edge model for {'x'.join(map(str, size))} images and "
                              f"{task.num_classes} classes (model {task.name!r}); edge model "
                              f"{edge.name!r} takes {'x'.join(map(str, edge.input_size))} and has {edge.num_classes} "
                              f"(set codec.edge_model / codec.edge_checkpoint)")


@register_codec("local")
class LocalCodec(EdgeCodec):
    """The edge model answers every image on the device; nothing is sent (0 bytes).

    The reference row for device-only inference: its accuracy is the floor any offloading codec
    built on the same edge model should beat.
    """

    def __init__(self, edge_model: str = "vit_edge", edge_checkpoint: str | None = None) -> None:
        super().__init__(edge_model, edge_checkpoint)

    def bind(self, task: TaskModel) -> None:
        self.check_edge_fits(task)
        super().bind(task)

    def device_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.edge(images).cpu()

    def encode(self, features: torch.Tensor) -> list[Payload]:
        return [Payload(b"", local_prediction=int(i)) for i in features.argmax(dim=-1)]

    def max_payload_bytes(self) -> int:
        """Nothing is ever sent."""
        return 0

    def decode(self, data: list[bytes]) -> Any:
        raise PayloadError(f"local payload 0 ({len(data[0]) if data else 0} bytes) is unexpected: local sends no "
                           f"payload (the edge model answers on the device); got {len(data)} payload(s)")

    def rate_point(self) -> str:
        return f"edge={self.edge.name}"


@register_codec("patchsel")
class PatchSelCodec(EdgeCodec):
    """Entropy gate + attention-ranked patches + real payload; all knobs are config options.

    ``server_weights``: null runs the run's own server model (``model=``) on the kept tokens; a
    shipped name (``vit_fmnist_patchdrop``, trained by ``python -m splitbench.train codec=patchsel``)
    loads fine-tuned weights into a copy of it instead, and the rate point says so.
    """

    extra_columns = ("kept_patches", "token_cost", "mask_bytes", "gate_uncertainty")
    # the edge model stays the server's; server_weights names a shipped (manifest) checkpoint only
    client_options = frozenset({"eta", "delta", "gate", "selection", "k", "threshold", "score", "pixels",
                                "quality", "abbreviated", "server_weights"})

    def __init__(self, eta: Annotated[float, Range(0)] = 0.4, delta: Annotated[float, Range(0, 1)] = 0.97,
                 gate: Annotated[str, OneOf(*GATES)] = "min_entropy",
                 selection: Annotated[str, OneOf(*SELECTIONS)] = "cumulative",
                 k: Annotated[int, Range(1, 10_000)] = 16, threshold: Annotated[float, Range(0, 1)] = 0.02,
                 score: Annotated[str, OneOf(*SCORES)] = "cls_attention",
                 pixels: Annotated[str, OneOf(*PIXEL_CODINGS)] = "lossless",
                 quality: Annotated[int, Range(1, 100)] = 75, abbreviated: bool = True,
                 edge_model: str = "vit_edge", edge_checkpoint: str | None = None,
                 server_weights: str | None = None, train: dict[str, Any] | None = None) -> None:
        self.eta, self.delta, self.threshold = float(eta), float(delta), float(threshold)
        self.gate, self.selection, self.k, self.score = gate, selection, k, score
        self.pixels, self.quality, self.abbreviated = pixels, quality, abbreviated
        self.server_weights = server_weights
        self._jpeg = JpegPixels(self.quality, self.abbreviated)
        super().__init__(edge_model, edge_checkpoint)
        self.edge_grid = grid_of(self.edge.net, self.edge.input_size, f"edge model {edge_model!r}")
        self._server_weights = resolve(name=server_weights) if server_weights is not None else None

    # -- binding -----------------------------------------------------------------------------------
    def bind(self, task: TaskModel) -> None:
        grid = grid_of(task.net, task.input_size, f"server model {task.name!r}")  # before anything binds
        self.check_edge_fits(task)
        super().bind(task)
        self.grid: Grid = grid
        if self.grid != self.edge_grid:
            raise ConfigError(f"the edge model's patch grid {self.edge_grid} differs from the server model "
                              f"{task.name!r}'s {self.grid}; patchsel needs the same grid on both ends")
        self.server_net = task.net
        if self._server_weights is not None:
            self.server_net = copy.deepcopy(task.net)  # on the task model's device
            try:
                self.server_net.load_state_dict(self._server_weights.state, strict=True)
            except RuntimeError as err:
                raise ConfigError(f"codec.server_weights={self.server_weights!r} does not fit server model "
                                  f"{task.name!r}: {str(err).splitlines()[0]}") from None
            self.server_net.eval()

    # -- device ------------------------------------------------------------------------------------
    def device_forward(self, images: torch.Tensor) -> EdgeOutput:
        logits, scores = edge_forward(self.edge.net, self.edge.normalize(images), self.score)
        return EdgeOutput(images=images, logits=logits.cpu(), scores=scores.cpu())

    def encode(self, features: EdgeOutput) -> list[Payload]:
        u = uncertainty(features.logits, self.gate)
        mask = select(features.scores, self.selection, delta=self.delta, k=self.k, threshold=self.threshold)
        preds = features.logits.argmax(dim=-1)
        grid = getattr(self, "grid", self.edge_grid)
        out = []
        for i, image in enumerate(features.images.to(torch.uint8).numpy()):
            if float(u[i]) < self.eta:
                out.append(Payload(b"", local_prediction=int(preds[i]), extras={
                    "kept_patches": math.nan, "token_cost": 0.0, "mask_bytes": math.nan,
                    "gate_uncertainty": float(u[i])}))
                continue
            indices = np.flatnonzero(mask[i].numpy())
            if self.pixels == "lossless":
                pixels = encode_lossless(grid, image, indices)
            else:
                pixels = self._jpeg.encode(grid, image, indices)
            out.append(Payload(pack_payload(grid, indices, pixels), extras={
                "kept_patches": float(len(indices)), "token_cost": len(indices) / grid.patches,
                "mask_bytes": float(mask_bytes(grid.patches, len(indices))), "gate_uncertainty": float(u[i])}))
        return out

    # -- server ------------------------------------------------------------------------------------
    def max_payload_bytes(self) -> int:
        """Count + widest mask + worst-case pixels of every patch (wire.max_payload_bytes)."""
        return max_payload_bytes(self.grid, self.pixels)

    def decode(self, data: list[bytes]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        limit = self.max_payload_bytes()
        for i, blob in enumerate(data):
            indices, pixels = unpack_payload(self.grid, blob, self.name, i, limit)
            if self.pixels == "lossless":
                patches = decode_lossless(self.grid, pixels, indices, self.name, i)
            else:
                patches = self._jpeg.decode(self.grid, pixels, indices, self.name, i)
            out.append((indices, patches))
        return out

    def server_forward(self, features: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
        """Samples with the same kept count run as one batch (exact: no padding, no masks)."""
        logits: list[torch.Tensor | None] = [None] * len(features)
        by_count: dict[int, list[int]] = {}
        for i, (indices, _) in enumerate(features):
            by_count.setdefault(len(indices), []).append(i)
        for members in by_count.values():
            idx = torch.from_numpy(np.stack([features[i][0] for i in members])).to(self.device)
            patches = torch.from_numpy(np.stack([features[i][1] for i in members]))  # B,n,C,p,p (normalize moves them)
            normed = self.task.normalize(patches.flatten(0, 1)).view(*patches.shape)
            for j, row in zip(members, kept_logits(self.server_net, normed, idx)):
                logits[j] = row
        return torch.stack(logits)  # type: ignore[arg-type]

    # -- description -------------------------------------------------------------------------------
    def rate_point(self) -> str:
        rule = {"cumulative": f"delta={self.delta:g}", "topk": f"k={self.k}",
                "threshold": f"thr={self.threshold:g}"}[self.selection]
        gate = "" if self.gate == "min_entropy" else f" {self.gate}"
        pix = "lossless" if self.pixels == "lossless" else f"jpeg q={self.quality}" + (
            " abbrev" if self.abbreviated else "")
        score = "" if self.score == "cls_attention" else " rollout"
        server = "" if self.server_weights is None else f" server={self.server_weights}"
        return f"eta={self.eta:g}{gate} {rule}{score} {pix}{server}"

    def series(self) -> str:
        """One curve per selection rule and pixel coding; the gate threshold eta moves along it."""
        rule = self.rate_point().split(" ", 1)[1]
        return f"patchsel ({rule})"

    def fingerprint(self) -> dict[str, Any]:
        sha = self._server_weights.fingerprint if self._server_weights is not None else None
        return {**super().fingerprint(), "server_weights": sha}

    @classmethod
    def trainer(cls, cfg: Any) -> Any:
        """Fine-tune the server ViT for kept-patch inputs (optional; see train.py)."""
        from .train import PatchDropTrainer

        return PatchDropTrainer(cls, cfg)
