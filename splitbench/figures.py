"""``python -m splitbench.figures``: run (or reuse) the paper sweeps, then every figure and the claims table.

Each suite is a set of Hydra multirun sweeps, configured in ``conf/figures/<suite>.yaml``, with
fixed sweep directories under ``results/paper/<suite>/sweeps`` (relative to the current directory); a finished job is skipped on the next call (results.resume), so a
killed call resumes where it stopped and a second call only re-renders. Outputs (committed):

  results/paper/<suite>/report/...   tables and figures (splitbench.report)
  results/paper/claims.md            each paper's headline claim next to the ratio measured here

Codecs that are not registered (e.g. a plugin that is not installed) are skipped with a note. This
module never imports a codec: it runs ``python -m splitbench`` and reads the result files.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import yaml

from .paths import CONF_DIR, child_env
from .report import make_report

BANDWIDTHS = "0.1mbps,1mbps,5mbps,10mbps,25mbps,100mbps"


def load_suites(directory: Path = CONF_DIR / "figures") -> tuple[dict[str, dict[str, list[str]]], dict[str, list[str]]]:
    """``conf/figures/<suite>.yaml`` -> (suite -> sweep name -> overrides, suite -> common args)."""
    suites: dict[str, dict[str, list[str]]] = {}
    args: dict[str, list[str]] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        suites[path.stem] = {name: [str(o) for o in overrides] for name, overrides in data["sweeps"].items()}
        args[path.stem] = [str(o) for o in data.get("args") or []]
    return suites, args


# suite -> sweep name -> overrides (comma lists are swept by Hydra)
SUITES, SUITE_ARGS = load_suites()
# Stage times in CPU seconds of one thread: the figures then do not depend on what else the machine
# is doing while they are made (the runner's default is the wall clock). A CPU clock cannot time a
# GPU, so the models run on the CPU even where runtime.device=auto would pick one.
CLOCK_ARGS = ["measure.clock=cpu", "measure.threads=1", "runtime.device=cpu"]


def _codec_of(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("codec="))


def _sweep_command(suite: str, name: str, overrides: list[str], root: Path, bandwidths: str,
                   limit: int | None, workers: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "splitbench", "-m", *SUITE_ARGS[suite], *overrides, f"bandwidth={bandwidths}",
           f"hydra.sweep.dir={(root / 'sweeps' / name).resolve()}", "measure.progress=false", *CLOCK_ARGS,
           # always the CPU here: not part of the run directories' names, so earlier sweeps are reused
           "hydra.job.config.override_dirname.exclude_keys=[runtime.device]"]
    if workers is not None:
        cmd.append(f"measure.workers={workers}")
    if limit:
        cmd.append(f"data.limit={limit}")
    return cmd


def _run_sweep(suite: str, name: str, cmd: list[str]) -> bool:
    """One sweep in its own process; False when its codec is not registered (skipped)."""
    start = time.time()
    print(f"[{suite}] {name}: {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    codec = _codec_of(cmd)
    if proc.returncode == 2 and f"unknown codec {codec!r}" in proc.stderr:
        print(f"[{suite}] skip {name}: codec {codec!r} is not registered", flush=True)
        return False
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"sweep {suite}/{name} failed (exit {proc.returncode})")
    print(f"[{suite}] {name}: done in {time.time() - start:.0f} s", flush=True)
    return True


def run_sweeps(suite: str, root: Path, bandwidths: str, limit: int | None, jobs: int = 1) -> list[Path]:
    """Run a suite's sweeps; ``jobs`` > 1 runs that many sweeps at once, one core each.

    With several jobs each sweep measures in one process (``measure.workers=1``): whole sweeps are
    the unit of parallel work, so no sweep pays for starting measuring workers, and one sweep's
    start-up overlaps another's measuring. The first sweep runs alone, so the ``raw`` reference it
    measures is in the record cache before the others need it (measured once, not once per job).
    """
    sweeps = list(SUITES[suite].items())
    commands = {name: _sweep_command(suite, name, overrides, root, bandwidths, limit, 1 if jobs > 1 else None)
                for name, overrides in sweeps}
    done: dict[str, bool] = {}
    first, rest = sweeps[0][0], [name for name, _ in sweeps[1:]]
    done[first] = _run_sweep(suite, first, commands[first])
    if jobs > 1:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for name, ok in zip(rest, pool.map(lambda n: _run_sweep(suite, n, commands[n]), rest)):
                done[name] = ok
    else:
        for name in rest:
            done[name] = _run_sweep(suite, name, commands[name])
    return [root / "sweeps" / name for name, _ in sweeps if done[name]]


# -- claims ---------------------------------------------------------------------------------------
CLAIMS = [
    # (method, claim text, codec, baseline codec(s), metric, claimed ratio)
    ("TOFC", "-52% transmitted data vs ELIC at the same task score", "tofc", ["elic"], "bytes", 0.48),
    ("TOFC", "-63% system latency vs ELIC (10 Mbit/s here)", "tofc", ["elic"], "latency", 0.37),
    ("FrankenSplit", "-60% bitrate vs the best prior split-computing method (vs JPEG here)",
     "frankensplit", ["jpeg"], "bytes", 0.40),
    ("Patch selection", "-68% communication at ~1 pt accuracy loss (vs full image, same pixel coding)",
     "patchsel", ["png"], "bytes", 0.32),
]


def best_at_floor(df: pd.DataFrame, codec: str, floor: float, metric: str, mbps: float = 10.0) -> float:
    at = df[(df["codec"] == codec) & np.isclose(df["mbps"], mbps) & (df["accuracy"] >= floor - 1e-12)]
    if at.empty:
        return math.nan
    col = "bytes_per_image" if metric == "bytes" else "latency_mean_ms"
    return float(at[col].min())


def claims_table(df: pd.DataFrame, floor_drop: float = 0.01) -> pd.DataFrame:
    raw = df[df["codec"] == "raw"]
    floor = float(raw["accuracy"].iloc[0]) - floor_drop if len(raw) else math.nan
    rows = []
    for method, claim, codec, baselines, metric, claimed in CLAIMS:
        ours = best_at_floor(df, codec, floor, metric)
        base_vals = {b: best_at_floor(df, b, floor, metric) for b in baselines}
        base_name, base = min(((b, v) for b, v in base_vals.items()), key=lambda kv: (math.isnan(kv[1]), kv[1]))
        ratio = ours / base if base and not math.isnan(base) and not math.isnan(ours) else math.nan
        if codec not in set(df["codec"]):
            verdict = f"n/a: no {codec} results"
        elif math.isnan(ours):
            verdict = f"not reproduced: no {codec} point within {100 * floor_drop:.0f} pt of raw"
        elif math.isnan(base):
            verdict = f"n/a: {base_name} has no point within {100 * floor_drop:.0f} pt of raw"
        else:
            verdict = "reproduced" if ratio <= claimed else "not reproduced"
        rows.append({"method": method, "claim": claim, "claimed ratio": claimed, "baseline": base_name,
                     "ours": ours, "baseline value": base, "measured ratio": ratio, "verdict": verdict})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitbench.figures", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path("results") / "paper"), help="default: results/paper (current directory)")
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma list of {', '.join(SUITES)}")
    p.add_argument("--bandwidths", default=BANDWIDTHS)
    p.add_argument("--limit", type=int, default=None, help="data.limit for a quick look (not the paper setting)")
    p.add_argument("--no-run", action="store_true", help="only re-render from existing sweeps")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                   help="sweeps run at once, one core each (default: the cores available; 1: one at a time, "
                        "each with measure.workers=auto)")
    args = p.parse_args(argv)
    out = Path(args.out)
    start = time.time()
    claims = None
    for suite in args.suites.split(","):
        root = out / suite
        dirs = [root / "sweeps"] if args.no_run else run_sweeps(suite, root, args.bandwidths, args.limit, max(1, args.jobs))
        if not dirs:
            continue
        df, paths = make_report(dirs if not args.no_run else [root / "sweeps"], root / "report")
        print(f"[{suite}] {len(df)} rows -> {root / 'report'}")
        if suite == "fashion_mnist":
            claims = claims_table(df)
    if claims is not None:
        text = claims.to_markdown(index=False, floatfmt=".3g")
        tmp = out / ".claims.md.tmp"
        tmp.write_text("# Claims vs measured (python -m splitbench.figures)\n\n" + text + "\n")
        os.replace(tmp, out / "claims.md")
        print(text)
    print(f"figures done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
