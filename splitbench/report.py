"""``python -m splitbench.report DIR... [--out OUT]``: tables and figures from any set of runs.

Collects every ``results.csv`` under the given run or sweep directories (a directory without one,
e.g. a run killed before it finished, contributes nothing), removes duplicates (the same codec
options, data (name, options and sample count), model, link and profiles measured twice: the newest
wins), and writes one table and figure set per (data, model): directly into OUT when the runs share
one, else into ``OUT/<data>__<model>/`` each (plus every row in ``OUT/results.csv``):

  OUT/results.{csv,md,tex}          one row per (codec, rate point, link, profiles)
  OUT/rate_accuracy.{png,pdf}       accuracy vs bytes/image, every codec
  OUT/latency_vs_bandwidth.{png,pdf} best operating point meeting an accuracy floor, per bandwidth
  OUT/latency_breakdown.{png,pdf}   stacked stages at one bandwidth (default 10 Mbit/s)
  OUT/pareto.{png,pdf}              latency vs accuracy at that bandwidth, with the Pareto front
  OUT/decision_map.{png,pdf}        for each bandwidth and accuracy floor, the fastest codec
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .results import RESULTS_FILE, ordered  # noqa: E402

KEY = ["codec", "codec_options", "data", "data_options", "n", "model", "bandwidth", "mbps", "rtt_ms", "device",
       "server"]
GROUP = ["data", "model"]  # never mixed in one table or figure
NA = "n/a"
STAGES = ["device", "encode", "rtt", "transmit", "decode", "server"]
STAGE_COLOURS = ["#4c72b0", "#55a868", "#c4c4c4", "#dd8452", "#8172b3", "#937860"]


class ReportError(Exception):
    pass


def collect(dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Every finished run under ``dirs``, deduplicated (newest file wins)."""
    frames = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise ReportError(f"{d} does not exist")
        files = [d] if d.is_file() else sorted(d.rglob(RESULTS_FILE))
        for f in files:
            df = pd.read_csv(f)
            df["run_dir"] = str(f.parent)
            df["_mtime"] = f.stat().st_mtime
            frames.append(df)
    if not frames:
        raise ReportError(f"no {RESULTS_FILE} under {', '.join(map(str, dirs))}")
    df = pd.concat(frames, ignore_index=True)
    if "series" not in df.columns:
        df["series"] = df["codec"]
    df["series"] = df["series"].fillna(df["codec"])
    key = [k for k in KEY if k in df.columns]
    # NaN never equals NaN: compare options as text so runs without a column still de-duplicate
    ident = df[key].astype(str)
    df = df.loc[ident.assign(_mtime=df["_mtime"]).sort_values("_mtime")
                .drop_duplicates(subset=key, keep="last").index].drop(columns="_mtime")
    return ordered(df.sort_values(["data", "model", "codec", "bytes_per_image", "mbps"]).reset_index(drop=True))


def score_column(df: pd.DataFrame) -> str:
    """Accuracy where labels exist; agreement with the uncompressed model otherwise (e.g. photos)."""
    return "accuracy" if df["accuracy"].notna().any() else "agreement"


def _what(df: pd.DataFrame) -> str:
    """``data / model`` of a (single-group) table, for figure titles."""
    return " + ".join(sorted({f"{d} / {m}" for d, m in zip(df["data"], df["model"])}))


def label(row: pd.Series) -> str:
    return f"{row['series']} {row['rate_point']}".strip()


def best_meeting_floor(df: pd.DataFrame, floor: float, score: str) -> pd.DataFrame:
    """Per (codec, bandwidth): the lowest-latency operating point whose score >= floor."""
    ok = df[df[score] >= floor - 1e-12]
    if ok.empty:
        return ok
    idx = ok.groupby(["series", "bandwidth"])["latency_mean_ms"].idxmin()
    return ok.loc[idx]


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        tmp = out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path)
    plt.close(fig)
    return paths


def _codec_styles(codecs: Iterable[str]) -> dict[str, dict]:
    colours = [*plt.get_cmap("tab10").colors, "#000000", "#9a6324", "#469990", "#000075", "#f032e6", "#808000"]
    markers = "osD^vP*Xhp<>d"
    return {c: {"color": colours[i % len(colours)], "marker": markers[i % len(markers)]}
            for i, c in enumerate(sorted(codecs))}


def fig_rate_accuracy(df: pd.DataFrame, out: Path, score: str) -> list[Path]:
    points = df.drop_duplicates(subset=[k for k in ("codec", "codec_options", "data_options", "n") if k in df])
    styles = _codec_styles(points["series"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for codec, grp in points.groupby("series"):
        grp = grp.sort_values("bytes_per_image")
        if (grp["bytes_per_image"] <= 0).all():  # device-only: a horizontal reference line
            ax.axhline(100 * grp[score].iloc[0], ls=":", color=styles[codec]["color"], label=f"{codec} (0 bytes)")
            continue
        ax.plot(grp["bytes_per_image"], 100 * grp[score], label=codec, **styles[codec], lw=1.5, ms=5)
    ax.set_xscale("log")
    ax.set_xlabel("payload bytes per image (real bitstream, log scale)")
    ax.set_ylabel(f"top-1 {score} (%)")
    ax.set_title(f"Rate vs {score}: {_what(df)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a curve
    return _save(fig, out, "rate_accuracy")


def fig_latency_vs_bandwidth(df: pd.DataFrame, out: Path, score: str, floor: float) -> list[Path]:
    best = best_meeting_floor(df, floor, score)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = _codec_styles(df["series"].unique())
    for codec, grp in best.groupby("series"):
        grp = grp.sort_values("mbps")
        ax.plot(grp["mbps"], grp["latency_mean_ms"], label=codec, **styles[codec], lw=1.5, ms=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("uplink bandwidth (Mbit/s, log scale)")
    ax.set_ylabel("end-to-end latency, mean (ms, log scale)")
    ax.set_title(f"Fastest operating point with {score} >= {100 * floor:.1f}%\n{_what(df)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if not best.empty:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out, "latency_vs_bandwidth")


def fig_breakdown(df: pd.DataFrame, out: Path, score: str, floor: float, mbps: float) -> list[Path]:
    at = df[np.isclose(df["mbps"], mbps)]
    best = best_meeting_floor(at, floor, score).sort_values("latency_mean_ms")
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * max(1, len(best))))
    left = np.zeros(len(best))
    names = [label(r) for _, r in best.iterrows()]
    for stage, colour in zip(STAGES, STAGE_COLOURS):
        vals = best[f"lat_{stage}_ms"].to_numpy() if len(best) else np.zeros(0)
        ax.barh(names, vals, left=left, color=colour, label=stage)
        left += vals
    ax.set_xlabel("mean latency (ms)")
    ax.set_title(f"Latency breakdown at {mbps:g} Mbit/s ({score} >= {100 * floor:.1f}%)\n{_what(df)}",
                 fontsize=10)
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / max(1, len(best))))
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out, "latency_breakdown")


def pareto_front(points: pd.DataFrame, score: str) -> pd.DataFrame:
    """Points not beaten by another with lower-or-equal latency and higher-or-equal score."""
    pts = points.sort_values(["latency_mean_ms", score], ascending=[True, False])
    front, best = [], -math.inf
    for idx, row in pts.iterrows():
        if row[score] > best:
            front.append(idx)
            best = row[score]
    return points.loc[front]


def fig_pareto(df: pd.DataFrame, out: Path, score: str, mbps: float) -> list[Path]:
    at = df[np.isclose(df["mbps"], mbps)]
    styles = _codec_styles(df["series"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for codec, grp in at.groupby("series"):
        ax.scatter(grp["latency_mean_ms"], 100 * grp[score], label=codec, color=styles[codec]["color"],
                   marker=styles[codec]["marker"], s=25)
    if not at.empty:
        front = pareto_front(at, score).sort_values("latency_mean_ms")
        ax.step(front["latency_mean_ms"], 100 * front[score], where="post", color="k", lw=1, alpha=0.6,
                label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(f"end-to-end latency at {mbps:g} Mbit/s, mean (ms, log scale)")
    ax.set_ylabel(f"top-1 {score} (%)")
    ax.set_title(f"Latency vs {score}: every operating point\n{_what(df)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out, "pareto")


def decision_table(df: pd.DataFrame, score: str, floors: list[float]) -> pd.DataFrame:
    """Rows: accuracy floors; columns: bandwidths; cell: the fastest codec meeting the floor."""
    table = {}
    for mbps in sorted(df["mbps"].unique()):
        at = df[np.isclose(df["mbps"], mbps)]
        col = {}
        for floor in floors:
            ok = at[at[score] >= floor - 1e-12]
            col[floor] = ok.loc[ok["latency_mean_ms"].idxmin(), "series"] if len(ok) else "none"
        table[mbps] = col
    return pd.DataFrame(table)


def _wrap(text: str, width: int = 12) -> str:
    """Break a series name at its separators so it fits a decision-map cell."""
    return "\n".join(textwrap.wrap(text.replace("_", "_\u200b"), width, break_long_words=True)).replace("\u200b", "")


def fig_decision_map(df: pd.DataFrame, out: Path, score: str, floors: list[float]) -> list[Path]:
    return _save(draw_decision_map(decision_table(df, score, floors), score, _what(df)), out, "decision_map")


def draw_decision_map(table: pd.DataFrame, score: str, what: str) -> plt.Figure:
    """The decision table as coloured cells, each label wrapped and the cells sized to hold it."""
    codecs = sorted(set(table.to_numpy().ravel()) - {"none"}) + ["none"]
    styles = _codec_styles([c for c in codecs if c != "none"])
    colours = [styles[c]["color"] if c in styles else (0.9, 0.9, 0.9, 1) for c in codecs]
    index = {c: i for i, c in enumerate(codecs)}
    grid = np.vectorize(index.get)(table.to_numpy())
    labels = [[_wrap(v) for v in row] for row in table.to_numpy()]
    lines = max((cell.count("\n") + 1 for row in labels for cell in row), default=1)
    width = max((len(line) for row in labels for cell in row for line in cell.split("\n")), default=4)
    cell_w, cell_h = max(0.9, 0.075 * width + 0.2), max(0.45, 0.17 * lines + 0.15)
    fig, ax = plt.subplots(figsize=(1.4 + cell_w * table.shape[1], 1.2 + cell_h * table.shape[0]))
    ax.imshow(grid, cmap=matplotlib.colors.ListedColormap(colours), vmin=-0.5, vmax=len(codecs) - 0.5,
              aspect="auto", origin="lower")
    for (i, j), _ in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7, linespacing=0.95)
    ax.set_xticks(range(table.shape[1]), [f"{m:g}" for m in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{100 * f:.1f}" for f in table.index])
    ax.set_xlabel("uplink bandwidth (Mbit/s)")
    ax.set_ylabel(f"{score} floor (%)")
    ax.set_title(f"Decision map: lowest-latency codec meeting the floor\n{what}", fontsize=10)
    return fig


def write_tables(df: pd.DataFrame, out: Path) -> list[Path]:
    """results.csv (every column, empty where unknown) and results.md/.tex (readable; n/a where unknown)."""
    cols = ["data", "model", "series", "rate_point", "bandwidth", "device", "server", "n", "accuracy",
            "agreement", "bytes_per_image", "bpp", "est_bits_per_image", "offload_ratio", "latency_mean_ms",
            "latency_p50_ms", "latency_p95_ms"]
    cols = [c for c in cols if c in df.columns]
    readable = df[cols].astype(object).where(df[cols].notna(), NA)
    paths = []
    for ext in ("csv", "md", "tex"):
        path = out / f"results.{ext}"
        tmp = out / f".results.tmp.{ext}"
        if ext == "csv":
            df.drop(columns=["run_dir"], errors="ignore").to_csv(tmp, index=False)
        elif ext == "md":
            tmp.write_text(readable.to_markdown(index=False, floatfmt=".4g") + "\n")
        else:
            tmp.write_text(df[cols].to_latex(index=False, float_format="%.4g", na_rep=NA))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def group_name(data: str, model: str) -> str:
    """Folder of one (data, model) group inside a report with several."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{data}__{model}")


def report_group(df: pd.DataFrame, out: Path, floor_drop: float, mbps: float, reference: str) -> list[Path]:
    """Every table and figure for rows of one (data, model)."""
    out.mkdir(parents=True, exist_ok=True)
    score = score_column(df)
    ref = df[df["codec"] == reference]
    ref_score = float(ref[score].iloc[0]) if len(ref) else float(df[score].max())
    floor = ref_score - floor_drop
    floors = sorted({round(ref_score - d, 4) for d in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)})
    paths = write_tables(df, out)
    paths += fig_rate_accuracy(df, out, score)
    paths += fig_latency_vs_bandwidth(df, out, score, floor)
    paths += fig_breakdown(df, out, score, floor, mbps)
    paths += fig_pareto(df, out, score, mbps)
    paths += fig_decision_map(df, out, score, floors)
    return paths


def make_report(dirs: Iterable[str | Path], out: Path, floor_drop: float = 0.01, mbps: float = 10.0,
                reference: str = "raw") -> tuple[pd.DataFrame, list[Path]]:
    """Write every table and figure, one set per (data, model); returns (the collected table, paths)."""
    df = collect(dirs)
    out = Path(out)
    groups = list(df.groupby(GROUP, sort=True))
    if len(groups) == 1:
        return df, report_group(df, out, floor_drop, mbps, reference)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_tables(df, out)
    for (data, model), rows in groups:
        paths += report_group(rows.reset_index(drop=True), out / group_name(data, model), floor_drop, mbps,
                              reference)
    return df, paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitbench.report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively for results.csv)")
    p.add_argument("--out", default=None, help="output directory (default: <first dir>/report)")
    p.add_argument("--floor-drop", type=float, default=0.01,
                   help="accuracy floor = reference accuracy minus this (default 0.01 = 1 point)")
    p.add_argument("--mbps", type=float, default=10.0, help="bandwidth of the breakdown/Pareto figures")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    try:
        df, paths = make_report(args.dirs, out, args.floor_drop, args.mbps)
    except ReportError as err:
        print(f"splitbench.report: error: {err}", file=sys.stderr)
        return 2
    groups = df.groupby(GROUP).ngroups
    print(f"{len(df)} rows from {df['run_dir'].nunique()} runs, {groups} (data, model) group(s) -> {out}")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
