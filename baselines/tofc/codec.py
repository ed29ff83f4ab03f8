"""``tofc``: task-oriented feature compression (Yuan et al., arXiv 2503.12926) on the server ViT.

Device: the first ``split`` blocks of the server ViT -> DPC-KNN merge of the patch tokens into
``n_clusters`` tokens (baselines/tofc/dpc_knn.py) -> the class token and the merged tokens are
entropy-coded with the selective hyperprior (entropy.py, coder.py). Server: decode -> the remaining
blocks on the 1 + n_c tokens -> logits. Fewer tokens shrink both the payload and the server compute.

Choices where the paper is silent (each a config value):
- cluster sizes are **not** sent: a merged token is the plain mean of its cluster and the server
  runs ordinary attention (no proportional attention). Sizes would cost ~n_c * 4 bits per image;
  the rate-aware training of the step sizes absorbs most of the merge error instead.
- the quantiser works along a fixed orthonormal basis, the PCA of the training tokens
  (``transform=pca``; ``none`` = the raw channels, the paper-literal form), with a learned step
  per component starting at ``q_step`` (token units). The basis ships in the checkpoint.
- ``entropy=none`` sends the merged tokens as raw fp16 (the "merging only" ablation);
  ``n_clusters=49`` (>= the patch count) skips merging (the "entropy model only" ablation).
- the server tail is the shipped server ViT, frozen; ``finetune_tail=true`` trains and ships a copy.

Devices: the ViT blocks and the DPC-KNN merge run on ``runtime.device``; the merged tokens come
back to the CPU, where the whole entropy model (quantiser basis and steps, hyper-analysis, the
experts' hyper-synthesis, the router, the CDF tables) runs in ``encode``/``decode``: it is never
moved (``device_modules`` lists only a fine-tuned tail copy), so both ends pick the same CDF rows
whatever device the ViT halves ran on.

Checkpoints: ``checkpoints/tofc_s{split}_c{n_clusters}_e{n_experts}_{lap|gau}_l{lmbda}[_ft][_notf].pt``,
chosen by the options; ``checkpoint=PATH`` loads a user's file (same options as at training).
"""
from __future__ import annotations

import copy
import hashlib
from typing import Annotated, Any

import numpy as np
import torch
from torch import nn

from splitbench.codecs import Codec, Payload, register_codec
from splitbench.errors import CheckpointError, ConfigError, PayloadError
from splitbench.models.vit import vit_logits_from, vit_tokens_until
from splitbench.options import OneOf, Range

from .coder import TokenCoder
from .dpc_knn import dpc_knn_merge
from .entropy import CONDITIONALS, SelectiveHyperprior

ENTROPY_MODES = ("hyperprior", "none")
TRANSFORMS = ("pca", "none")


def checkpoint_name(split: int, n_clusters: int, n_experts: int, distribution: str, lmbda: float,
                    finetune_tail: bool = False, transform: str = "pca") -> str:
    """File name of a checkpoint trained with these options (the zoo finds it by its point)."""
    return (f"tofc_s{split}_c{n_clusters}_e{n_experts}_{distribution[:3]}_l{lmbda:g}"
            + ("_ft" if finetune_tail else "") + ("_notf" if transform == "none" else ""))


def tail_modules(net: nn.Module, split: int) -> nn.ModuleList:
    """The server half of a timm ViT after ``split`` blocks (what ``finetune_tail`` trains)."""
    return nn.ModuleList([*net.blocks[split:], net.norm, net.fc_norm, net.head])


@register_codec("tofc")
class TofcCodec(Codec):
    """Split ViT + DPC-KNN token merging + selective hyperprior entropy coding."""

    extra_columns = ("tokens",)
    # the options that pick a shipped checkpoint (and the device-side k); training knobs stay fixed
    client_options = frozenset({"split", "n_clusters", "k", "entropy", "distribution", "n_experts", "lmbda",
                                "finetune_tail", "transform"})

    def __init__(self, split: Annotated[int, Range(0)] = 3, n_clusters: Annotated[int, Range(1)] = 8,
                 k: Annotated[int, Range(1)] = 5, entropy: Annotated[str, OneOf(*ENTROPY_MODES)] = "hyperprior",
                 distribution: Annotated[str, OneOf(*CONDITIONALS)] = "laplace",
                 n_experts: Annotated[int, Range(1)] = 4, lmbda: Annotated[float, Range(0)] = 0.002,
                 checkpoint: str | None = None, finetune_tail: bool = False,
                 transform: Annotated[str, OneOf(*TRANSFORMS)] = "pca", hyper_channels: Annotated[int, Range(1)] = 8,
                 hidden: Annotated[int, Range(1)] = 64, train: dict[str, Any] | None = None) -> None:
        self.split, self.n_clusters, self.k = split, n_clusters, k
        self.entropy, self.distribution, self.n_experts = entropy, distribution, n_experts
        self.lmbda, self.checkpoint, self.finetune_tail = float(lmbda), checkpoint, bool(finetune_tail)
        self.transform = transform
        self.hyper_channels, self.hidden = hyper_channels, hidden
        self.coder: TokenCoder | None = None
        self.tail_state: dict[str, torch.Tensor] | None = None
        self._sha = ""
        self._server_net: nn.Module | None = None
        if entropy == "hyperprior":
            self._load()

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def ckpt_name(self) -> str:
        return checkpoint_name(self.split, self.n_clusters, self.n_experts, self.distribution, self.lmbda,
                               self.finetune_tail, self.transform)

    @property
    def point(self) -> dict[str, Any]:
        """The options that pick a shipped checkpoint (its zoo point)."""
        return {"split": self.split, "n_clusters": self.n_clusters, "n_experts": self.n_experts,
                "distribution": self.distribution, "lmbda": self.lmbda, "finetune_tail": self.finetune_tail,
                "transform": self.transform}

    def _load(self) -> None:
        weights = self.weights("tofc", self.point, self.checkpoint,
                               f"codec.n_clusters={self.n_clusters} codec.lmbda={self.lmbda:g} ...")
        state, self._sha = weights.state, weights.fingerprint
        arch = weights.arch or {"hyper_channels": self.hyper_channels, "hidden": self.hidden}
        if arch.get("k", self.k) != self.k:
            raise ConfigError(f"codec.k={self.k} differs from the k={arch['k']} that {weights.source} was trained with")
        tail = {k[len("tail."):]: v for k, v in state.items() if k.startswith("tail.")}
        model_state = {k: v for k, v in state.items() if not k.startswith("tail.")}
        if "shift" not in model_state:
            raise weights.misfit("tofc", "it holds no entropy model")
        dim = model_state["shift"].numel()
        model = SelectiveHyperprior(dim, int(arch.get("hyper_channels", self.hyper_channels)),
                                    int(arch.get("hidden", self.hidden)), self.n_experts, self.distribution)
        missing, unexpected = model.load_state_dict(model_state, strict=False)
        missing = [k for k in missing if k.rsplit(".", 1)[-1] not in
                   ("_offset", "_quantized_cdf", "_cdf_length", "scale_table", "scale_bound")]
        if missing or unexpected:
            raise weights.misfit(f"tofc with n_experts={self.n_experts}, distribution={self.distribution}",
                                 f"{len(missing)} missing, {len(unexpected)} unexpected keys")
        if self.finetune_tail and not tail:
            raise CheckpointError(f"codec.finetune_tail=true but {weights.source} holds no tail weights")
        self.tail_state = tail or None
        hexa = len(self._sha) >= 16 and all(ch in "0123456789abcdef" for ch in self._sha[:16])
        self.coder = TokenCoder(model, tag=bytes.fromhex(self._sha[:16]) if hexa  # in-memory weights: hash the tag
                                else hashlib.sha256(self._sha.encode()).digest()[:8])

    def fingerprint(self) -> dict[str, Any]:
        return {"checkpoint_sha256": self._sha}

    # -- binding -------------------------------------------------------------------------------
    def bind(self, task: Any) -> None:
        net = task.net
        if type(net).__name__ != "VisionTransformer" or getattr(net, "num_prefix_tokens", 0) != 1:
            raise ConfigError(f"tofc needs a timm VisionTransformer server model with one class token (it "
                              f"clusters its patch tokens); model {task.name!r} is a {type(net).__name__}")
        super().bind(task)
        if not hasattr(net, "blocks") or not 0 <= self.split <= len(net.blocks):
            raise ConfigError(f"codec.split={self.split} needs a timm ViT with at least {self.split} blocks; "
                              f"model {task.name!r} has {len(getattr(net, 'blocks', []))}")
        dim = net.embed_dim
        if self.coder is not None and self.coder.model.dim != dim:
            raise CheckpointError(f"tofc checkpoint codes {self.coder.model.dim}-dim tokens, model {task.name!r} "
                                  f"has {dim}")
        self._server_net = net
        if self.tail_state is not None:
            server = copy.deepcopy(net)  # on the task model's device, as the task model is
            tail_modules(server, self.split).load_state_dict(self.tail_state)
            self._server_net = server.eval()

    def device_modules(self) -> list[nn.Module]:
        """A fine-tuned tail's own copy of the server ViT (the task model is its owner's); the entropy
        model (``self.coder``) is never listed: it codes on the CPU."""
        net = self._server_net
        return [net] if net is not None and net is not getattr(getattr(self, "task", None), "net", None) else []

    @property
    def n_tokens(self) -> int:
        patches = self.task.net.patch_embed.num_patches
        return 1 + min(self.n_clusters, patches)

    def max_payload_bytes(self) -> int:
        """fp16 tokens exactly, or the check bytes + worst-case rANS stream of every token symbol."""
        if self.entropy == "none":
            return self.n_tokens * self.task.net.embed_dim * 2
        assert self.coder is not None
        return self.coder.max_payload_bytes(self.n_tokens)

    # -- the four stages -----------------------------------------------------------------------
    def device_forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = vit_tokens_until(self.task.net, self.task.normalize(images), self.split)
        return dpc_knn_merge(tokens, self.n_clusters, self.k).cpu()

    def encode(self, features: torch.Tensor) -> list[Payload]:
        n_tok = features.shape[1]
        if self.entropy == "none":
            return [Payload(f.to(torch.float16).contiguous().numpy().tobytes(), estimated_bits=16.0 * f.numel(),
                            extras={"tokens": float(n_tok)}) for f in features]
        assert self.coder is not None
        out = []
        for f in features:
            data, bits, _ = self.coder.encode(f)
            out.append(Payload(data, estimated_bits=bits, extras={"tokens": float(n_tok)}))
        return out

    def decode(self, data: list[bytes]) -> torch.Tensor:
        n_tok, dim = self.n_tokens, self.task.net.embed_dim
        if self.entropy == "none":
            expected = n_tok * dim * 2
            out = []
            for i, blob in enumerate(data):
                if len(blob) != expected:
                    raise PayloadError(f"tofc (entropy=none) payload {i} has {len(blob)} bytes, expected "
                                       f"{expected} ({n_tok} tokens x {dim} fp16)")
                arr = np.frombuffer(blob, dtype=np.float16).reshape(n_tok, dim).astype(np.float32)
                if not np.isfinite(arr).all():
                    raise PayloadError(f"tofc (entropy=none) payload {i} holds non-finite values")
                out.append(torch.from_numpy(arr))
            return torch.stack(out)
        assert self.coder is not None
        return torch.stack([self.coder.decode(blob, n_tok, i) for i, blob in enumerate(data)])

    def server_forward(self, features: torch.Tensor) -> torch.Tensor:
        return vit_logits_from(self._server_net, features.to(self.device), self.split)

    def rate_point(self) -> str:
        parts = [f"s={self.split}", f"nc={self.n_clusters}"]
        if self.entropy == "none":
            return " ".join(parts + ["fp16"])
        parts += [f"ne={self.n_experts}", self.distribution[:3], f"l={self.lmbda:g}"]
        return " ".join(parts + (["ft"] if self.finetune_tail else []) + (["no-pca"] if self.transform == "none" else []))

    def series(self) -> str:
        """Fine-tuned-tail and no-merging variants are separate curves; lambda moves along one."""
        tags = [] if self.n_clusters < 49 else ["no merging"]
        tags += ["fine-tuned tail"] if self.finetune_tail else []
        tags += ["fp16"] if self.entropy == "none" else []
        return "tofc" + (f" ({', '.join(tags)})" if tags else "")

    # -- training --------------------------------------------------------------------------------
    @classmethod
    def trainer(cls, cfg: Any) -> Any:
        """``python -m splitbench.train codec=tofc ...`` (see baselines/tofc/train.py)."""
        from .train import TofcTrainer

        return TofcTrainer(cls, cfg)
