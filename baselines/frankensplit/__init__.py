"""``frankensplit``: shallow variational bottleneck injection with head distillation.

FrankenSplit (Furutanpey et al., arXiv 2302.10681, IEEE TMC 2024) replaces the shallow head of a
frozen server backbone with a tiny device encoder and a compressai entropy model; a server decoder
reconstructs the head's output and the frozen tail finishes the task. The shipped points cut the
28x28 grey ViT (``model=vit_fmnist``: its tokens after block ``split``, class token included); any
other splittable timm backbone (ViT, ResNet, EfficientNet, MobileNetV3, ConvNeXt, Swin) at any input
size is trained for a named split (``codec.split=layer2``) and run with ``codec.checkpoint=PATH``
(``backbone.py``: the arch follows the split's stride and travels inside the weights). See
``model.py`` for the networks, ``wire.py`` for the payload format and ``train.py`` for training.

Options (``codec.*``):

* ``lmbda``: the rate weight the checkpoint was trained with; picks the shipped operating point
  ``frankensplit[_hp][_s<split>]_l<lmbda>``.
* ``prior``: ``factorized`` (the paper's ``EntropyBottleneck``) or ``hyperprior`` (scale
  hyperprior: ``EntropyBottleneck`` for z + ``GaussianConditional`` for y).
* ``split``: where the server model is cut: a timm feature name (``layer2``, ``blocks.3``), or for
  a ViT an integer k = after k blocks (default 1, the shipped grey ViT's).
* ``checkpoint``: a path to your own weights instead of the shipped ones; a checkpoint trained on
  another backbone carries its arch (and ``arch`` is then not used).
* ``arch``: encoder/decoder widths (must match the checkpoint; ``channels`` null: derived);
  ``train``: training settings (``codec.train.*``, read by training only).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any

import torch

from splitbench.codecs import Codec, Payload, register_codec
from splitbench.codecs.bitstream import put_varint
from splitbench.codecs.rans import check_latent, max_stream_bytes, table_max_value
from splitbench.errors import ConfigError, PayloadError
from splitbench.models.vit import vit_logits_from
from splitbench.options import OneOf, Positive
from splitbench.zoo import model_points_hint

from .backbone import ARCH_KEY, arch_in_state, check_generic_server, same_split, split_of
from .model import PRIORS, Arch, FrankenSplitNet
from .wire import CHECK_BYTES, NAME, pack_strings, padded, unpack_strings


def checkpoint_name(prior: str, split: int, lmbda: float) -> str:
    """File name of a trained operating point, e.g. ``frankensplit_l0.032`` or ``frankensplit_hp_l0.064``."""
    return NAME + ("_hp" if prior == "hyperprior" else "") + (f"_s{split}" if split != 1 else "") + f"_l{lmbda:g}"


def generic_name(model: str, prior: str, split: str, lmbda: float) -> str:
    """File name of a point trained on another backbone, e.g. ``frankensplit_resnet18_layer2_l0.128``."""
    return "_".join([NAME, model.replace("/", "-"), *(["hp"] if prior == "hyperprior" else []),
                     split.replace(".", "-"), f"l{lmbda:g}"])


def check_options(prior: str, split: int | str, lmbda: float) -> None:
    """One-line errors for the options every path shares."""
    if prior not in PRIORS:
        raise ConfigError(f"codec.prior for {NAME} must be one of {', '.join(PRIORS)}, got {prior!r}")
    if isinstance(split, bool) or not isinstance(split, (int, str)) or (isinstance(split, int) and split < 0) \
            or split == "":
        raise ConfigError(f"codec.split for {NAME} must be a timm feature name (layer2, blocks.3) or a ViT "
                          f"block count >= 0, got {split!r}")
    if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not lmbda > 0:
        raise ConfigError(f"codec.lmbda for {NAME} must be a positive number, got {lmbda!r}")


def is_grey_vit(task: Any) -> bool:
    """The shipped points' kind of server model: a timm ViT on 1-channel images."""
    return type(getattr(task, "net", None)).__name__ == "VisionTransformer" and task.input_size[0] == 1


def build_arch(prior: str, split: int, arch: dict[str, Any] | None, lmbda: float = 1.0) -> Arch:
    """Validate the user-facing options and return the shipped layout's shape description."""
    check_options(prior, split, lmbda)
    if not isinstance(split, int):
        raise ConfigError(f"codec.split={split!r}: the shipped {NAME} layout (grey ViT) takes a block count")
    allowed = {"channels", "latent", "hyper_latent", "decoder_blocks", "latent_block", "tokens", "dim", "heads", "grid"}
    arch = {k: v for k, v in dict(arch or {}).items() if v is not None}  # null: the layout's default
    if arch.pop("latent_block", True) is not True:
        raise ConfigError(f"codec.arch.latent_block=false needs a backbone split (codec.split=FEATURE on another "
                          f"model); the shipped {NAME} layout (grey ViT) keeps its latent block")
    unknown = sorted(set(arch) - allowed)
    if unknown:
        raise ConfigError(f"codec.arch has no key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
    try:
        built = Arch.from_dict({**Arch().to_dict(), **arch, "prior": prior, "split": split})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"codec.arch for {NAME} is malformed ({err})") from None
    if len(built.channels) != 2 or not all(isinstance(c, int) and c > 0 for c in (*built.channels, built.latent)):
        raise ConfigError(f"codec.arch.channels must be two positive integers, got {list(built.channels)}")
    return built


def check_server(a: Arch, task: Any) -> None:
    """The server model must be the grey ViT (grid, width, blocks) this arch was built for."""
    net = getattr(task, "net", None)
    blocks = getattr(net, "blocks", None)
    if not is_grey_vit(task) or blocks is None:
        name = getattr(task, "name", task)
        raise ConfigError(f"{NAME} weights for the grey ViT (model=vit_fmnist) cannot serve model {name!r}; "
                          f"train a point for it (python -m splitbench.train codec={NAME} codec.split=FEATURE "
                          f"model=...) and pass codec.checkpoint=PATH{model_points_hint(NAME, str(name))}")
    grid = tuple(net.patch_embed.grid_size)
    if (grid != (a.grid, a.grid) or net.embed_dim != a.dim or task.input_size[0] != 1
            or net.num_prefix_tokens + a.grid * a.grid != a.tokens):
        raise ConfigError(f"{NAME} checkpoint was trained for a {a.grid}x{a.grid}-patch grey ViT of width {a.dim}; "
                          f"model {task.name!r} has a {grid[0]}x{grid[1]} grid, width {net.embed_dim}, "
                          f"{task.input_size[0]} channel(s)")
    if not 0 <= a.split < len(blocks):
        raise ConfigError(f"codec.split={a.split} is outside the server ViT's blocks 0..{len(blocks) - 1}")


#: the encoder/decoder sizes the codec builds when not told otherwise (conf/codec/frankensplit.yaml
#: restates them); channels null: derived from the backbone. Read-only: it is a shared default.
DEFAULT_ARCH: Mapping[str, Any] = MappingProxyType({"channels": None, "latent": 32, "hyper_latent": 16,
                                                    "decoder_blocks": 1, "latent_block": True})


@register_codec(NAME)
class FrankenSplitCodec(Codec):
    """Device: tiny conv encoder + range coder. Server: token decoder + frozen ViT tail."""
    client_options = frozenset({"lmbda", "prior", "split"})  # pick a shipped checkpoint; arch is fixed

    def __init__(self, lmbda: Annotated[float, Positive] = 0.128, prior: Annotated[str, OneOf(*PRIORS)] = "factorized",
                 split: int | str = 1, checkpoint: str | None = None,
                 arch: Mapping[str, Any] | None = DEFAULT_ARCH, train: dict[str, Any] | None = None) -> None:
        check_options(prior, split, lmbda)
        self.lmbda = float(lmbda)
        weights = self.weights(NAME, {"prior": prior, "split": split, "lmbda": self.lmbda}, checkpoint,
                               f"codec.prior={prior} codec.split={split} codec.lmbda={self.lmbda:g}")
        state = dict(weights.state)
        stored = arch_in_state(state, weights.source)
        if stored is None:  # the shipped layout (grey ViT), its arch from the options
            self.arch = build_arch(prior, split, arch, lmbda)
            weights.check_arch(self.arch.to_dict(), family=NAME)
        else:  # trained on another backbone: the weights say what they are
            del state[ARCH_KEY]
            if prior != stored.prior or not (split == 1 or same_split(split, stored.split)):
                raise ConfigError(f"{weights.source} was trained with codec.prior={stored.prior} "
                                  f"codec.split={stored.split}; the config asks for prior={prior} split={split}")
            self.arch = stored
        self.prior, self.split = self.arch.prior, self.arch.split
        net = FrankenSplitNet(self.arch)
        try:
            net.load_weights(state)
        except (KeyError, RuntimeError) as err:
            raise weights.misfit(f"{NAME} with arch {self.arch.to_dict()}", str(err)) from None
        self._fingerprint = weights.fingerprint
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def bind(self, task: Any) -> None:
        if self.arch.generic:
            check_generic_server(self.arch, task)
            self._cut = split_of(task, self.arch.split)
        else:
            check_server(self.arch, task)
        super().bind(task)

    def device_modules(self) -> list[torch.nn.Module]:
        """Encoder and decoder; the entropy models (and the hyperprior's h_a/h_s, which set the
        Gaussian's CDF indexes) stay on the CPU, so both ends index the same CDFs on any device."""
        return [self.net.encoder, self.net.decoder]

    # -- the four stages ----------------------------------------------------------------
    def device_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(self.task.normalize(images)).float().cpu()

    def encode(self, features: torch.Tensor) -> list[Payload]:
        check_latent(features, NAME)  # out-of-range symbols could hang compressai's encoder
        strings, bits = self.net.compress(features.float().cpu())
        return [Payload(pack_strings(s), estimated_bits=float(b)) for s, b in zip(strings, bits)]

    def _string_sizes(self) -> list[tuple[int, Any]]:
        """(symbols, entropy model) of each string in wire order: [y] or [z, y]."""
        a = self.arch
        h, w = a.hw
        y = (a.latent * h * w, self.net.entropy if a.prior == "factorized" else self.net.gaussian)
        return [y] if a.prior == "factorized" else [(a.hyper_latent * ((h + 1) // 2) * ((w + 1) // 2),
                                                     self.net.entropy), y]

    def max_payload_bytes(self) -> int:
        """CRC + length prefix + each string at its worst-case rANS length (codecs/rans.py)."""
        longest = [max_stream_bytes(n, table_max_value(m._offset.reshape(-1).tolist(), m._cdf_length.reshape(-1).tolist()))
                   for n, m in self._string_sizes()]
        return CHECK_BYTES + sum(len(put_varint(n)) for n in longest[:-1]) + sum(longest)

    def decode(self, data: list[bytes]) -> torch.Tensor:
        sizes = [n for n, _ in self._string_sizes()]
        limit = self.max_payload_bytes()
        parsed = []
        for i, blob in enumerate(data):
            strings = unpack_strings(blob, len(sizes), i, limit)
            parsed.append([padded(s, n) for s, n in zip(strings, sizes)])
        y_hat = self.net.decompress(parsed)
        bad = [i for i in range(len(data)) if not torch.isfinite(y_hat[i]).all()]
        if bad:
            raise PayloadError(f"{NAME} payload {bad[0]} decoded to non-finite latents: it is corrupt")
        return y_hat

    def server_forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.net.decoder(features.to(self.device))
        if self.arch.generic:
            return self._cut.tail(tokens)
        return vit_logits_from(self.task.net, tokens, self.split)

    # -- description -----------------------------------------------------------------------
    def rate_point(self) -> str:
        return f"lmbda={self.lmbda:g}" + (" hyperprior" if self.prior == "hyperprior" else "") + (
            f" split={self.split}" if self.split != 1 else "")

    def series(self) -> str:
        variant = [v for v in ("hyperprior" if self.prior == "hyperprior" else "",
                               f"split={self.split}" if self.split != 1 else "") if v]
        return NAME + (f" ({', '.join(variant)})" if variant else "")

    def fingerprint(self) -> dict[str, Any]:
        return {"checkpoint": self._fingerprint}

    @classmethod
    def trainer(cls, cfg: Any) -> Any:
        """``python -m splitbench.train codec=frankensplit codec.lmbda=...``: head distillation (train.py)."""
        from .train import FrankenSplitTrainer

        return FrankenSplitTrainer(cls, cfg)


__all__ = ["FrankenSplitCodec", "checkpoint_name", "generic_name", "build_arch", "check_server", "is_grey_vit"]
