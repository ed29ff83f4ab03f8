"""``python -m splitbench.benchmark``: wall time, images/s and peak RSS of full default runs.

Each run is a fresh process (``python -m splitbench codec=X bandwidth=10mbps``) with an empty
record cache, so it pays for start-up, the model, the codec and the raw reference measurement, as a
new user would. Then the same codec over 6 bandwidths in one multirun (records measured once,
priced six times) is compared with the single run. Then splitbench's own cost (splitbench.overhead):
start-up, the measurement phase against a bare loop of a codec's four stage calls, entropy coding
inside compressai's rANS against the Python around it, workers=1 against workers=2, and per-image
stage times with an unrelated CPU hog running. This is a benchmark, not a test: it prints figures
for the README (one table, each target beside its figure) and asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .paths import REPO_ROOT

SIX = "0.1mbps,1mbps,5mbps,10mbps,25mbps,100mbps"


def timed_run(args: list[str], cache: Path, root: Path = REPO_ROOT) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of ``python -m splitbench args`` in a fresh process, run
    from the checkout ``root`` (its own splitbench first on the path; another checkout for a baseline)."""
    env = dict(os.environ, SPLITBENCH_CACHE=str(cache), PYTHONPATH=str(root))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "splitbench", *args], cwd=root, env=env,
                                stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"run failed: {' '.join(args)}\n{err.read()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitbench.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--codecs", default="raw,jpeg,webp,png")
    p.add_argument("--limit", type=int, default=None, help="data.limit (default: the full 10k test set)")
    p.add_argument("--overhead-limit", type=int, default=500,
                   help="images for the in-process overhead figures (bare loop, coding share, CPU hog)")
    p.add_argument("--skip-runs", action="store_true", help="only the overhead table")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout (e.g. `git worktree add /tmp/base <commit>`): its default run is timed "
                        "interleaved with this one's, cold caches, and the ratio printed")
    args = p.parse_args(argv)
    if args.skip_runs:
        return overhead_table(args.limit, args.overhead_limit, args.baseline)
    limit = [f"data.limit={args.limit}"] if args.limit else []
    n = args.limit or 10_000
    tmp = Path(tempfile.mkdtemp(prefix="splitbench-bench-"))
    rows = []
    try:
        for codec in args.codecs.split(","):
            cache = tmp / f"cache-{codec}"
            wall, rss, _ = timed_run([f"codec={codec}", "bandwidth=10mbps", "measure.progress=false",
                                      f"hydra.run.dir={tmp}/run-{codec}", *limit], cache)
            rows.append((codec, "1 bandwidth, cold cache", wall, n / wall, rss))
            print(f"{codec:>14}  1 bandwidth   {wall:7.1f} s  {n / wall:8.0f} img/s  peak RSS {rss:6.0f} MiB",
                  flush=True)
        codec = args.codecs.split(",")[0 if "jpeg" not in args.codecs else args.codecs.split(",").index("jpeg")]
        cache = tmp / "cache-six"
        one, _, _ = timed_run([f"codec={codec}", "bandwidth=10mbps", "measure.progress=false",
                               f"hydra.run.dir={tmp}/one", *limit], cache)
        shutil.rmtree(cache)
        six, rss, _ = timed_run(["-m", f"codec={codec}", f"bandwidth={SIX}", "measure.progress=false",
                                 f"hydra.sweep.dir={tmp}/six", *limit], cache)
        rows.append((codec, "6 bandwidths, cold cache", six, n / six, rss))
        print(f"{codec:>14}  6 bandwidths  {six:7.1f} s  ({six / one:.2f}x the single run of {one:.1f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| codec | run | wall s | images/s | peak RSS MiB |\n|---|---|---:|---:|---:|")
    for codec, what, wall, ips, rss in rows:
        print(f"| {codec} | {what} | {wall:.1f} | {ips:.0f} | {rss:.0f} |")
    return overhead_table(args.limit, args.overhead_limit, args.baseline)


def _load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def overhead_table(limit: int | None, small: int, baseline: Path | None = None) -> int:
    """splitbench's own cost, one table; each figure is a ratio measured in this invocation."""
    import torch

    from . import overhead

    torch.set_num_threads(1)
    n = limit or 10_000
    small = min(small, n)
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, value: str, target: str, met: bool | None) -> None:
        rows.append((what, value, target, "n/a" if met is None else ("met" if met else "NOT met")))
        print(f"{what:<52} {value:<40} {rows[-1][3]}  ({_load()})", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="splitbench-bench-"))
    try:
        start, _, _ = timed_run(["codec=jpeg", "data.limit=1", "measure.reference=null", "measure.progress=false",
                                 f"hydra.run.dir={tmp}/start"], tmp / "cache-start")
        add("start-up: process start to 1 image measured + priced", f"{start:.1f} s", "-", None)
        walls: dict[int, list[float]] = {1: [], 2: []}
        for rnd in range(2):  # interleaved, cold cache each time
            for w in (1, 2):
                cache = tmp / f"cache-w{w}-{rnd}"
                wall, _, _ = timed_run(["codec=jpeg", "bandwidth=10mbps", "measure.progress=false",
                                        f"measure.workers={w}", f"hydra.run.dir={tmp}/w{w}-{rnd}",
                                        *([f"data.limit={limit}"] if limit else [])], cache)
                walls[w].append(wall)
        if baseline is not None:  # the same default command in both checkouts, A B A B, cold caches
            default = ["measure.progress=false", *([f"data.limit={limit}"] if limit else [])]
            pair: dict[str, list[float]] = {"new": [], "base": []}
            for rnd in range(2):
                for which, root in (("base", Path(baseline)), ("new", REPO_ROOT)):
                    wall, _, _ = timed_run([*default, f"hydra.run.dir={tmp}/{which}-{rnd}"], tmp / f"cache-{which}-{rnd}",
                                           root)
                    pair[which].append(wall)
            new_s, base_s = min(pair["new"]), min(pair["base"])
            add(f"default run (`python -m splitbench`), {n} images, cold: this / baseline",
                f"{new_s:.1f} s / {base_s:.1f} s = {new_s / base_s:.2f}x", "<= 0.5x", new_s / base_s <= 0.5)
        w1, w2 = min(walls[1]), min(walls[2])
        add(f"jpeg default run, {n} images, cold: workers=2 / workers=1", f"{w2:.1f} s / {w1:.1f} s = {w2 / w1:.2f}x",
            "<= 0.5x of 31.7 s (2 cores)", w2 <= 0.5 * 31.7 if n == 10_000 else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for codec in ("jpeg", "frankensplit", "elic"):
        ratio, bare_ms = overhead.framework_vs_bare(codec, small)
        add(f"{codec}: measurement / bare 4-stage loop ({small} img)", f"{ratio:.3f} (bare {bare_ms:.2f} ms/img)",
            "<= 1.15", ratio <= 1.15)
    for codec in ("elic", "bmshj2018", "frankensplit", "tofc"):
        r = overhead.coding_share(codec, min(small, 100))
        coder = r["rans"] + r["compressai"] + r["ours"]
        share = r["ours"] / r["stages"]
        add(f"{codec}: encode+decode ms/img; inside: rANS / compressai py / ours",
            f"{r['stages']:.2f}; {r['rans']:.2f} / {r['compressai']:.2f} / {r['ours']:.2f} (ours {share:.0%} of "
            f"encode+decode, {r['ours'] / coder:.0%} of the coder calls)",
            "ours <= 25% of encode+decode (elic, bmshj2018)", share <= 0.25 if codec in ("elic", "bmshj2018") else None)
    for threads, label in ((1, "measure.threads=1 (default)"), (None, "measure.threads=null (all cores)")):
        idle, busy, flagged = overhead.stage_ms_with_hog("jpeg", small, threads)
        add(f"jpeg stage ms/img idle vs 1 CPU hog, {label}",
            f"{idle:.2f} vs {busy:.2f} = {busy / idle:.2f}x{' (flagged contended)' if flagged else ''}",
            "<= 1.5x", busy / idle <= 1.5 if threads == 1 else None)
    print(f"\n| measurement | figure | target | status |\n|---|---|---|---|")
    for what, value, target, status in rows:
        print(f"| {what} | {value} | {target} | {status} |")
    print(f"\nhost: {os.cpu_count()} cores, {_load()} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
