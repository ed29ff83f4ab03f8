"""The feature-distribution figure (TOFC paper, Fig. 4) on this benchmark's tokens.

    python -m baselines.tofc.feature_distribution [--images 1000] [--n-clusters 8] [--split 3]

Histogram of the values TOFC codes: the class token + DPC-KNN merged tokens after ``split`` blocks
of the shipped server ViT (first ``--images`` Fashion-MNIST test images, every channel, each channel
centred on its mean so the pooled histogram shows the shape the conditional models), with
maximum-likelihood Gaussian, Laplacian and Cauchy fits (scipy ``fit``) and their mean negative
log-likelihood. Writes ``results/tofc/feature_distribution.png`` and ``feature_distribution.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from splitbench.data import build_dataset
from splitbench.models import build_model
from splitbench.models.vit import vit_tokens_until

from .ablation import OUT_DIR
from .dpc_knn import dpc_knn_merge

FITS = {"Gaussian": scipy.stats.norm, "Laplacian": scipy.stats.laplace, "Cauchy": scipy.stats.cauchy}


@torch.inference_mode()
def coded_values(images: int, n_clusters: int, split: int, k: int = 5) -> np.ndarray:
    task = build_model({"name": "vit_fmnist", "checkpoint": None, "pretrained": True})
    ds = build_dataset({"name": "fashion_mnist", "split": "test", "root": None, "limit": images})
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    tokens = dpc_knn_merge(vit_tokens_until(task.net, task.normalize(x), split), n_clusters, k)
    flat = tokens.reshape(-1, tokens.shape[-1])
    return (flat - flat.mean(0)).numpy().ravel().astype(np.float64)


def fit_all(values: np.ndarray) -> dict[str, tuple[tuple[float, ...], float]]:
    """ML parameters and mean NLL (nats) of each family."""
    out = {}
    for name, dist in FITS.items():
        params = dist.fit(values)
        out[name] = (tuple(float(p) for p in params), float(-dist.logpdf(values, *params).mean()))
    return out


def main(argv: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--split", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    values = coded_values(args.images, args.n_clusters, args.split)
    fits = fit_all(values)
    lo, hi = np.percentile(values, [0.1, 99.9])
    grid = np.linspace(lo, hi, 600)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, log in zip(axes, (False, True)):
        ax.hist(values, bins=200, range=(lo, hi), density=True, color="0.75", label="merged tokens")
        for (name, (params, nll)), style in zip(fits.items(), ("-", "--", ":")):
            ax.plot(grid, FITS[name].pdf(grid, *params), style, lw=1.6, label=f"{name} (NLL {nll:.3f})")
        ax.set_xlabel("token value (channel-centred)")
        ax.set_ylabel("density")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(1e-4, None)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"TOFC coded tokens: split {args.split}, class + {args.n_clusters} DPC-KNN tokens, "
                 f"{args.images} test images ({values.size} values)", fontsize=10)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "feature_distribution.png"
    fig.savefig(png, dpi=120)
    lines = ["| fit | ML parameters (loc, scale) | mean NLL (nats) |", "|---|---|---|"]
    lines += [f"| {n} | {', '.join(f'{p:.4g}' for p in params)} | {nll:.4f} |" for n, (params, nll) in fits.items()]
    (args.out / "feature_distribution.md").write_text(
        f"# Feature distribution ({values.size} values; `python -m baselines.tofc.feature_distribution`)\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {png}")
    return png


if __name__ == "__main__":
    main()
