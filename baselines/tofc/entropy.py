"""TOFC's entropy model: a fully connected hyperprior per merged token with selective experts.

Per token ``t`` (96 floats at the default split):

    y   = ((t - shift) @ basis.T) / step          fixed orthogonal basis (PCA of training tokens,
                                                  or identity), per-component learned step
    z   = h_a(y)                                  FC, ``hyper_channels`` outputs
    z^  = round(z - median) + median              coded with compressai's EntropyBottleneck
    (mu_e, b_e) = h_s^e(z^)   e = 1..n_e          one hyper-synthesis head per expert
    e*  = argmax router(y)                        the device picks the expert; e* is side info
    y^  = round(y - mu_e*) + mu_e*                coded with a Laplacian (or Gaussian) conditional

Training mixes the experts softly (``softmax(router / temperature)``) with a load-balance term;
inference takes the top expert. The Laplacian conditional subclasses compressai's
``GaussianConditional`` and swaps the standardised CDF and quantile, which is all that its
likelihood, ``update()`` (the quantised CDF tables of the rANS coder) and index building use.
"""
from __future__ import annotations

import math

import scipy.stats
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

#: buffers rebuilt by ``update()`` from the config (never shipped: fp16 would round them)
DERIVED_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table", "scale_bound")


class LaplacianConditional(GaussianConditional):
    """``GaussianConditional`` with a Laplace(mu, b) density; ``scales`` are the Laplace ``b``.

    compressai builds everything from two hooks: ``_standardized_cumulative`` (likelihoods and the
    pmf behind each quantised CDF row in ``update()``) and ``_standardized_quantile`` (how far each
    row's support reaches, from ``tail_mass``). The unit Laplace CDF is ``exp(x)/2`` for x < 0 and
    ``1 - exp(-x)/2`` otherwise; both branches are computed from ``exp(-|x|)`` so neither
    overflows and the small tail probabilities keep full precision.
    """

    def _standardized_cumulative(self, inputs: Tensor) -> Tensor:
        half_tail = 0.5 * torch.exp(-inputs.abs())
        return torch.where(inputs < 0, half_tail, 1.0 - half_tail)

    @staticmethod
    def _standardized_quantile(quantile):
        return scipy.stats.laplace.ppf(quantile)


CONDITIONALS = {"laplace": LaplacianConditional, "gaussian": GaussianConditional}


def scale_table(low: float = 0.11, high: float = 64.0, levels: int = 64) -> list[float]:
    """Log-spaced scales of the conditional's CDF rows (compressai's recipe, a smaller top end:
    token residuals in step units stay far below compressai's image-latent maximum of 256)."""
    return torch.exp(torch.linspace(math.log(low), math.log(high), levels)).tolist()


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient (straight-through)."""
    return x + (torch.round(x) - x).detach()


class SelectiveHyperprior(nn.Module):
    """Hyperprior + ``n_experts`` hyper-synthesis heads + router, on tokens of width ``dim``."""

    def __init__(self, dim: int, hyper_channels: int = 8, hidden: int = 64, n_experts: int = 4,
                 distribution: str = "laplace", q_step: float = 1.0, transform: str = "pca") -> None:
        super().__init__()
        self.dim, self.n_experts, self.transform = dim, n_experts, transform
        self.register_buffer("shift", torch.zeros(dim))
        # rows = the orthonormal directions the tokens are quantised along (PCA set by init_from_data)
        self.register_buffer("basis", torch.eye(dim))
        # the quantisation step of every component, in token units; starts at q_step, then learned
        self.log_step = nn.Parameter(torch.full((dim,), math.log(q_step)))
        self.h_a = _mlp(dim, hidden, hyper_channels)
        self.bottleneck = EntropyBottleneck(hyper_channels)
        self.h_s = nn.ModuleList(_mlp(hyper_channels, hidden, 2 * dim) for _ in range(n_experts))
        self.router = nn.Linear(dim, n_experts)
        self.conditional = CONDITIONALS[distribution](scale_table())

    # -- shared pieces ---------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, tokens: Tensor) -> None:
        """Centre the quantiser on real tokens (N, dim) and, for ``transform=pca``, rotate it onto
        their principal axes before training.

        Why: the 96 channels of a ViT token are strongly correlated; scalar quantisation along the
        principal axes lets the learned steps drop the low-variance directions almost for free
        (reverse water-filling). On the split-3 tokens this halves the bytes at equal accuracy.
        """
        self.shift.copy_(tokens.mean(dim=0))
        if self.transform == "pca":
            centred = (tokens - self.shift).double()
            # fewer tokens than dimensions: the full SVD completes the basis with an orthonormal
            # set of the directions the tokens never moved along (they get the smallest steps' share)
            _, _, vh = torch.linalg.svd(centred, full_matrices=centred.shape[0] < self.dim)
            self.basis.copy_(vh.float())

    @property
    def step(self) -> Tensor:
        return self.log_step.exp()

    def to_latent(self, tokens: Tensor) -> Tensor:
        return ((tokens - self.shift) @ self.basis.T) / self.step

    def from_latent(self, y: Tensor) -> Tensor:
        return (y * self.step) @ self.basis + self.shift

    def expert_params(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, scale), each (T, n_experts, dim), from the decoded hyper-latent (T, hyper_channels)."""
        out = torch.stack([head(z_hat) for head in self.h_s], dim=1)
        mu, raw = out.chunk(2, dim=-1)
        return mu, nn.functional.softplus(raw)

    def y_bits(self, y: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        lik = self.conditional._likelihood(y, scales, means)
        lik = self.conditional.likelihood_lower_bound(lik)
        return -torch.log2(lik)

    # -- training ----------------------------------------------------------------------------
    def forward(self, tokens: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training pass on (B, T, dim) tokens.

        Returns (reconstructed tokens, bits per image (B,), router weights (B*T, n_e), z bits (B,)).
        The task path rounds straight-through (so the step gets the LSQ gradient, the rounding
        residual); the rate uses additive uniform noise, compressai's usual surrogate.
        """
        b, t, d = tokens.shape
        y = self.to_latent(tokens).reshape(b * t, d)
        z = self.h_a(y)
        _, z_lik = self.bottleneck(z)
        medians = self.bottleneck.quantiles[:, 0, 1]
        z_hat = ste_round(z - medians) + medians
        mu, scale = self.expert_params(z_hat)  # (BT, E, d)
        weights = torch.softmax(self.router(y) / temperature, dim=-1)  # (BT, E)
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        bits_e = self.y_bits(y_noisy[:, None, :], scale, mu).sum(-1)  # (BT, E)
        y_hat_e = ste_round(y[:, None, :] - mu) + mu  # (BT, E, d)
        y_hat = (weights[:, :, None] * y_hat_e).sum(1)
        side = math.log2(self.n_experts) if self.n_experts > 1 else 0.0
        y_bits = (weights * bits_e).sum(-1) + side
        z_bits = -torch.log2(z_lik).sum(-1)
        per_image = (y_bits + z_bits).reshape(b, t).sum(-1)
        return self.from_latent(y_hat).reshape(b, t, d), per_image, weights, z_bits.reshape(b, t).sum(-1)

    def balance_loss(self, weights: Tensor) -> Tensor:
        """sum_e (mean weight_e - 1/n_e)^2: keeps every expert in use."""
        return ((weights.mean(dim=0) - 1.0 / self.n_experts) ** 2).sum()

    def update(self) -> None:
        """Build the quantised CDF tables (after loading weights, before any coding)."""
        self.bottleneck.update(force=True)
        self.conditional.update_scale_table(scale_table(), force=True)


def shipped_state(module: nn.Module) -> dict[str, Tensor]:
    """State dict without the buffers ``update()`` derives (they are rebuilt at load time)."""
    return {k: v for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS}
