"""Reports from synthetic runs, a killed-and-resumed sweep, and Hydra's submitit launcher."""
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_cli
from splitbench.report import collect, decision_table, make_report, pareto_front
from splitbench.results import write_results


def synthetic_row(codec, rate, bpi, acc, mbps, lat):
    parts = {f"lat_{s}_ms": lat / 6 for s in ("device", "encode", "rtt", "transmit", "decode", "server")}
    return {"codec": codec, "series": codec, "rate_point": rate, "data": "fashion_mnist", "model": "vit_fmnist",
            "bandwidth": f"{mbps:g}mbps", "mbps": mbps, "rtt_ms": 10, "device": "host", "server": "host",
            "n": 100, "accuracy": acc, "agreement": acc, "bytes_per_image": bpi, "bpp": bpi * 8 / 784,
            "est_bits_per_image": np.nan, "latency_mean_ms": lat, "latency_p50_ms": lat, "latency_p95_ms": lat,
            "offload_ratio": 1.0, "codec_options": f'{{"q": "{rate}"}}', **parts}


@pytest.fixture()
def synthetic_runs(tmp_path):
    rows = [
        ("raw", "", 784, 0.90, 1, 8.0), ("raw", "", 784, 0.90, 10, 2.0),
        ("jpeg", "q=10", 300, 0.85, 1, 4.0), ("jpeg", "q=10", 300, 0.85, 10, 1.5),
        ("jpeg", "q=90", 600, 0.895, 1, 6.0), ("jpeg", "q=90", 600, 0.895, 10, 1.8),
        ("tiny", "a", 50, 0.80, 1, 1.0), ("tiny", "a", 50, 0.80, 10, 1.0),
    ]
    for i, r in enumerate(rows):
        write_results([synthetic_row(*r)], tmp_path / "sweep" / f"job{i}")
    (tmp_path / "sweep" / "killed").mkdir()  # a run that never finished: no results.csv
    return tmp_path / "sweep"


def test_report_writes_tables_and_figures(synthetic_runs, tmp_path):
    df, paths = make_report([synthetic_runs], tmp_path / "report")
    assert len(df) == 8
    names = {p.name for p in paths}
    for stem in ("rate_accuracy", "latency_vs_bandwidth", "latency_breakdown", "pareto", "decision_map"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
        assert (tmp_path / "report" / f"{stem}.png").stat().st_size > 5000
    assert {"results.csv", "results.md", "results.tex"} <= names
    assert "| jpeg" in (tmp_path / "report" / "results.md").read_text()


def test_decision_map_and_pareto(synthetic_runs):
    df = collect([synthetic_runs])
    table = decision_table(df, "accuracy", [0.80, 0.89, 0.90, 0.95])
    # floor 0.80: tiny is fastest everywhere; 0.89: jpeg q=90 beats raw; 0.90: only raw; 0.95: nobody
    assert list(table[1.0]) == ["tiny", "jpeg", "raw", "none"]
    assert list(table[10.0]) == ["tiny", "jpeg", "raw", "none"]
    front = pareto_front(df[df.mbps == 10], "accuracy")
    assert list(front.codec) == ["tiny", "jpeg", "jpeg", "raw"]


def test_duplicates_keep_newest(synthetic_runs):
    time.sleep(0.01)
    write_results([synthetic_row("tiny", "a", 50, 0.81, 10, 1.0)], synthetic_runs / "again")
    df = collect([synthetic_runs])
    assert len(df) == 8 and df[(df.codec == "tiny") & (df.mbps == 10)].accuracy.item() == 0.81


def test_one_report_per_data_and_model(synthetic_runs, tmp_path):
    """Runs of other data or models get their own table and figures; nothing is merged across them."""
    other = synthetic_row("jpeg", "q=10", 9000, float("nan"), 10, 30.0)
    other.update(data="photos", model="tf_efficientnet_lite0", agreement=0.7)
    write_results([other], synthetic_runs / "photos")
    limited = synthetic_row("jpeg", "q=10", 310, 0.86, 10, 1.5)
    limited.update(n=10, data_options='{"limit": 10, "name": "fashion_mnist"}')
    write_results([limited], synthetic_runs / "limited")
    df, paths = make_report([synthetic_runs], tmp_path / "report")
    assert len(df) == 10  # the limit=10 run is not de-duplicated into the full one
    fm, ph = tmp_path / "report" / "fashion_mnist__vit_fmnist", tmp_path / "report" / "photos__tf_efficientnet_lite0"
    assert (fm / "rate_accuracy.png").exists() and (ph / "decision_map.png").exists()
    assert "photos" not in (fm / "results.md").read_text()
    photos_md = (ph / "results.md").read_text()
    assert "| data" in photos_md and "n/a" in photos_md and "nan" not in photos_md
    assert len(pd.read_csv(tmp_path / "report" / "results.csv")) == 10


def test_decision_map_labels_fit_their_cells():
    names = ["frankensplit_hyperprior_split3_finetuned", "jpeg_abbrev", "patchsel_rollout_delta0.97", "none"]
    table = pd.DataFrame({mbps: names for mbps in (0.1, 1.0, 10.0, 100.0)}, index=[0.8, 0.85, 0.88, 0.9])
    from splitbench.report import draw_decision_map

    fig = draw_decision_map(table, "accuracy", "fashion_mnist / vit_fmnist")
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (1, 1)])  # one cell, in pixels
    assert len(ax.texts) == 16
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert box.width < abs(x1 - x0) and box.height < abs(y1 - y0), text.get_text()


def test_report_cli_error_on_empty_dir(tmp_path):
    proc = run_cli(str(tmp_path), module="splitbench.report")
    assert proc.returncode == 2 and "no results.csv under" in proc.stderr


SWEEP = ["-m", "codec=jpeg", "codec.quality=20,40,60", "bandwidth=1mbps,10mbps", "data.limit=16",
         "measure.progress=false"]


def _table(sweep_dir):
    df = collect([sweep_dir]).drop(columns=["run_dir", "records_key"])
    return df.sort_values(["rate_point", "bandwidth"]).reset_index(drop=True)


def test_killed_sweep_resumes_to_the_same_table(tmp_path):
    full = run_cli(*SWEEP, f"hydra.sweep.dir={tmp_path}/full")
    assert full.returncode == 0, full.stderr
    # Kill a fresh sweep (same cache) after its first job has finished.
    import os

    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "splitbench", *SWEEP, f"hydra.sweep.dir={tmp_path}/cut"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "cut").rglob("results.csv")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((tmp_path / "cut").rglob("results.csv")))
    assert 1 <= done_before < 6, "the kill must land mid-sweep"
    resumed = run_cli(*SWEEP, f"hydra.sweep.dir={tmp_path}/cut")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("skipping") == done_before
    cut, ref = _table(tmp_path / "cut"), _table(tmp_path / "full")
    assert len(cut) == 6
    pd.testing.assert_frame_equal(cut[["codec", "rate_point", "bandwidth", "accuracy", "bytes_per_image",
                                       "lat_transmit_ms"]],
                                  ref[["codec", "rate_point", "bandwidth", "accuracy", "bytes_per_image",
                                       "lat_transmit_ms"]])


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    proc = run_cli("-m", "hydra/launcher=submitit_local", "codec=png", "bandwidth=1mbps,10mbps",
                   "data.limit=4", "measure.progress=false", f"hydra.sweep.dir={tmp_path}/sub",
                   "hydra.launcher.timeout_min=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "sub").rglob("results.csv"))) == 2
