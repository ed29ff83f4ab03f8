"""TOFC ablation table: ``python -m baselines.tofc.ablation [--limit N] [--bandwidth 10mbps]``.

Runs ``python -m splitbench`` (measured records, cached, priced by the latency model) for the full
codec and each ablation, reads each run's ``results.csv``, and writes ``results/tofc/ablation.md``
(+ ``ablation.csv``, under the current directory):

- full TOFC (DPC-KNN merge + selective hyperprior, Laplacian, n_e experts)
- merging only (``entropy=none``: merged tokens sent as fp16)
- entropy model only (``n_clusters=49``: no merging)
- a single entropy model (``n_experts=1``)
- Gaussian instead of Laplacian conditional (``distribution=gaussian``)
- ``raw`` as the reference row.
Variants whose checkpoint is not shipped are listed as skipped, with the training command.
Each run is a ``python -m splitbench`` child process (codec packages never import the runner);
``main(..., launch=...)`` takes another launcher, e.g. the command-line entry point in one process.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from splitbench.paths import child_env

OUT_DIR = Path("results") / "tofc"

VARIANTS: list[tuple[str, list[str]]] = [
    ("TOFC (merge + selective hyperprior, Laplace, n_e=4)", []),
    ("merging only (fp16 tokens, no entropy model)", ["codec.entropy=none"]),
    ("entropy model only (no merging, 49 tokens)", ["codec.n_clusters=49"]),
    ("single entropy model (n_e=1)", ["codec.n_experts=1"]),
    ("Gaussian conditional", ["codec.distribution=gaussian"]),
]
COLUMNS = ["variant", "rate_point", "accuracy", "agreement", "bytes_per_image", "est_bits_per_image",
           "latency_mean_ms", "lat_transmit_ms", "server_mflops", "tokens"]


class Skipped(Exception):
    """A variant whose checkpoint is not shipped (the run's one-line error)."""


#: runs ``python -m splitbench <args>``; returns (exit status, stderr)
Launcher = Callable[[list[str]], tuple[int, str]]


def launch_subprocess(args: list[str]) -> tuple[int, str]:
    """``python -m splitbench args`` as a child process of this same checkout or installation."""
    proc = subprocess.run([sys.executable, "-m", "splitbench", *args], capture_output=True, text=True,
                          env=child_env())
    return proc.returncode, proc.stderr


def run_variant(overrides: list[str], launch: Launcher = launch_subprocess) -> dict[str, Any]:
    """One ``python -m splitbench`` run in a scratch directory; its results.csv row."""
    with tempfile.TemporaryDirectory(prefix="tofc-ablation-") as tmp:
        code, stderr = launch([*overrides, f"hydra.run.dir={tmp}/run"])
        error = next((line for line in stderr.splitlines() if line.startswith("splitbench: error:")), "")
        if code == 2 and "checkpoint" in error:
            raise Skipped(error.removeprefix("splitbench: error: "))
        if code != 0:
            raise SystemExit(f"python -m splitbench {' '.join(overrides)} failed:\n{stderr[-2000:]}")
        return pd.read_csv(Path(tmp) / "run" / "results.csv").iloc[0].to_dict()


def main(argv: list[str] | None = None, launch: Launcher = launch_subprocess) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all 10k)")
    parser.add_argument("--bandwidth", default="10mbps", help="a conf/bandwidth preset")
    parser.add_argument("--batch-size", type=int, default=1, help="measure.batch_size (1 = per-sample timing)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    common = ["codec=tofc", f"bandwidth={args.bandwidth}", f"measure.batch_size={args.batch_size}",
              "measure.progress=false"]
    if args.limit:
        common.append(f"data.limit={args.limit}")
    rows, skipped = [], []
    for label, overrides in VARIANTS:
        try:
            result = run_variant(common + overrides, launch)
        except Skipped as err:
            skipped.append(f"- {label}: skipped ({str(err).split(';')[0]})")
            continue
        rows.append({"variant": label, **result})
        print(f"{label}: accuracy {result['accuracy']:.4f}, {result['bytes_per_image']:.1f} bytes/image")
    if rows:
        reference = run_variant([o.replace("codec=tofc", "codec=raw") for o in common], launch)
        rows.append({"variant": "raw (reference: uncompressed image)", **reference})
    df = pd.DataFrame(rows)
    df = df[[c for c in COLUMNS if c in df.columns]]
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "ablation.csv", index=False)
    n = rows[0]["n"] if rows else 0
    command = ("python -m baselines.tofc.ablation" + (f" --limit {args.limit}" if args.limit else "")
               + f" --bandwidth {args.bandwidth}" + (f" --batch-size {args.batch_size}" if args.batch_size != 1 else ""))
    timing = "per-sample (batch 1)" if args.batch_size == 1 else f"amortised over batches of {args.batch_size}"
    text = [f"# TOFC ablations ({n} Fashion-MNIST test images, {args.bandwidth}, split 3, n_c=8, lambda=0.002, "
            "frozen server tail unless noted)", "",
            df.to_markdown(index=False, floatfmt=".4g"), "",
            f"Produced by `{command}`. Bytes are real payloads (estimate beside); latency from splitbench's link "
            f"model with stage times {timing}. Every trained variant: 800 steps on the same 24k cached training "
            "images (the 49-token one at batch 32 instead of 128, for equal compute)."]
    if skipped:
        text += ["", *skipped]
    path = args.out / "ablation.md"
    path.write_text("\n".join(text) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
