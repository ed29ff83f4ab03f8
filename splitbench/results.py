"""Result rows: written atomically as CSV in the run directory, printed as a compact table."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

RESULTS_FILE = "results.csv"

# Column order of results.csv (extra codec columns follow).
COLUMNS = [
    "codec", "series", "rate_point", "data", "model", "bandwidth", "mbps", "rtt_ms", "device", "server", "n",
    "accuracy", "agreement", "bytes_per_image", "bytes_per_offload", "bpp", "est_bits_per_image",
    "latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "lat_device_ms", "lat_encode_ms", "lat_rtt_ms",
    "lat_transmit_ms", "lat_decode_ms", "lat_server_ms", "offload_ratio", "device_mflops", "server_mflops",
    "timing", "codec_options", "data_options", "records_key", "splitbench_version",
]


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def write_results(rows: Iterable[dict[str, Any]], run_dir: Path) -> Path:
    """Write ``results.csv`` via a temp file + rename: a reader never sees a half-written file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULTS_FILE
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{RESULTS_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        ordered(pd.DataFrame(list(rows))).to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The compact table a run prints: one line per row, units in the header."""
    out = []
    for r in rows:
        out.append({
            "codec": r["codec"], "rate": r.get("rate_point", ""), "link": r.get("bandwidth", ""),
            "acc %": _fmt(100 * r["accuracy"], ".2f") if not _isnan(r["accuracy"]) else "n/a",
            "agree %": _fmt(100 * r["agreement"], ".2f") if not _isnan(r["agreement"]) else "n/a",
            "bytes/img": _fmt(r["bytes_per_image"], ".1f"), "bpp": _fmt(r["bpp"], ".3f"),
            "offload %": _fmt(100 * r["offload_ratio"], ".0f"),
            "lat ms (mean/p95)": f"{_fmt(r['latency_mean_ms'], '.2f')}/{_fmt(r['latency_p95_ms'], '.2f')}",
            "dev+enc / net / dec+srv ms": (
                f"{_fmt(r['lat_device_ms'] + r['lat_encode_ms'], '.2f')} / "
                f"{_fmt(r['lat_rtt_ms'] + r['lat_transmit_ms'], '.2f')} / "
                f"{_fmt(r['lat_decode_ms'] + r['lat_server_ms'], '.2f')}"),
        })
    return pd.DataFrame(out).to_markdown(index=False)


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))
