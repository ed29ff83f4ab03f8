"""``python -m splitbench.benchmark``: wall time, images/s and peak RSS of full default runs.

Each run is a fresh process (``python -m splitbench codec=X bandwidth=10mbps``) with an empty
record cache, so it pays for start-up, the model, the codec and the raw reference measurement, as a
new user would. Then the same codec over 6 bandwidths in one multirun (records measured once,
priced six times) is compared with the single run. This is a benchmark, not a test: it prints
figures for the README and asserts nothing.
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


def timed_run(args: list[str], cache: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of ``python -m splitbench args`` in a fresh process."""
    env = dict(os.environ, SPLITBENCH_CACHE=str(cache))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "splitbench", *args], cwd=REPO_ROOT, env=env,
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
    args = p.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
