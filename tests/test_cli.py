"""The runner end to end, and every user error giving one clear line and no partial result.

Most run in this process (fixture ``cli``); the single run, the sweep and the unknown-codec listing
stay real subprocesses: a user's command line, exit status and Hydra multirun are their point."""
import pandas as pd
import pytest

from conftest import run_cli


def _results(path):
    return sorted(path.rglob("results.csv"))


def test_single_run_writes_results_and_prints_table(tmp_path):
    proc = run_cli("codec=jpeg", "bandwidth=10mbps", "data.limit=24", "measure.progress=false",
                   f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr
    assert "| jpeg" in proc.stdout and "| raw" in proc.stdout and "bytes/img" in proc.stdout
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert len(df) == 1
    row = df.iloc[0]
    assert row.codec == "jpeg" and row.n == 24 and row.bandwidth == "10mbps" and row.mbps == 10
    assert 0 < row.bytes_per_image < 784 and 0.5 < row.accuracy <= 1 and 0.5 < row.agreement <= 1
    parts = ["lat_device_ms", "lat_encode_ms", "lat_rtt_ms", "lat_transmit_ms", "lat_decode_ms", "lat_server_ms"]
    assert row.latency_mean_ms == pytest.approx(sum(row[p] for p in parts))
    assert row.lat_rtt_ms == pytest.approx(10)


def test_multirun_sweep(tmp_path):
    proc = run_cli("-m", "codec=jpeg", "codec.quality=10,90", "bandwidth=1mbps,10mbps", "data.limit=12",
                   "measure.progress=false", f"hydra.sweep.dir={tmp_path}/sweep")
    assert proc.returncode == 0, proc.stderr
    files = _results(tmp_path)
    assert len(files) == 4
    df = pd.concat(pd.read_csv(f) for f in files)
    assert set(df.rate_point) == {"q=10", "q=90"} and set(df.bandwidth) == {"1mbps", "10mbps"}
    # one measurement priced twice: same bytes and accuracy for both links, slower link slower
    for q, grp in df.groupby("rate_point"):
        assert grp.bytes_per_image.nunique() == 1 and grp.accuracy.nunique() == 1
        slow, fast = grp.set_index("bandwidth").loc[["1mbps", "10mbps"], "lat_transmit_ms"]
        assert slow > 5 * fast


@pytest.mark.parametrize("args,needle", [
    (["codec=nosuch"], "unknown codec 'nosuch'; valid codecs: "),
    (["bandwidth=fast"], "unknown bandwidth 'fast'; valid bandwidth presets:"),
    (["codec.qualty=5"], "codec 'jpeg' has no option 'codec.qualty'"),
    (["data=imagefolder", "data.root=/nonexistent/imagenet"], "data.root '/nonexistent/imagenet' does not exist"),
    (["bandwidth.mbps=abc"], "bandwidth.mbps must be a number"),
    (["bandwidth.mbps=0"], "bandwidth.mbps must be a number > 0"),
    (["codec.quality=500"], "codec.quality for jpeg must be an integer in [1, 100]"),
    (["model.checkpoint=/nonexistent.pt"], "checkpoint '/nonexistent.pt' does not exist"),
])
def test_user_errors_are_one_line(cli, tmp_path, args, needle):
    code, _, stderr = cli(*args, "data.limit=4", f"hydra.run.dir={tmp_path}/run")
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("splitbench: error: ") and needle in lines[0], lines[0]
    assert not _results(tmp_path), "no partial result may be left behind"
    assert not (tmp_path / "run").exists()


def test_unknown_codec_lists_every_registered_codec():
    from splitbench import list_codecs

    proc = run_cli("codec=nosuch")
    assert proc.returncode == 2
    assert f"valid codecs: {', '.join(list_codecs())}" in proc.stderr


def test_finished_run_is_not_repeated(cli, tmp_path):
    args = ("codec=png", "data.limit=6", "measure.progress=false", f"hydra.run.dir={tmp_path}/run")
    assert cli(*args)[0] == 0
    before = (tmp_path / "run" / "results.csv").read_bytes()
    code, stdout, _ = cli(*args)
    assert code == 0 and "skipping" in stdout
    assert (tmp_path / "run" / "results.csv").read_bytes() == before


def test_efficientnet_photos_config_reports_agreement(cli, tmp_path):
    code, stdout, stderr = cli("data=photos", "model=efficientnet_lite0", "codec=jpeg", "data.limit=5", "data.crops=1",
                               "measure.progress=false", f"hydra.run.dir={tmp_path}/run")
    assert code == 0, stderr
    row = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    assert row.model == "tf_efficientnet_lite0" and row.n == 5
    assert pd.isna(row.accuracy) and 0 <= row.agreement <= 1  # unlabelled photos: agreement only
    assert row.bpp == pytest.approx(row.bytes_per_image * 8 / (224 * 224))
    assert "| raw" in stdout and "n/a" in stdout


def test_one_process_runs_many_jobs_over_one_loaded_model(tmp_path):
    """The basic launcher's case: jobs of one process share the task model and the record store."""
    from hydra import compose, initialize_config_dir

    from splitbench.job import Loaded
    from splitbench.paths import CONF_DIR
    from splitbench.run import execute

    loaded = Loaded()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        rows = [execute(compose("config", overrides=["codec=jpeg", f"codec.quality={q}", "data.limit=4",
                                                     "measure.progress=false", "measure.cache=false"]),
                        tmp_path / f"q{q}", loaded) for q in (10, 90)]
    assert len(loaded.models) == 1 and len(loaded.datasets) == 1 and len(loaded.stores) == 1
    assert [r[0]["rate_point"] for r in rows] == ["q=10", "q=90"]
    assert rows[0][0]["codec_options"] != rows[1][0]["codec_options"]  # defaults recorded: distinct keys
    assert rows[0][0]["bytes_per_image"] < rows[1][0]["bytes_per_image"]


def test_run_and_live_runner_do_not_import_each_other():
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys, splitbench.live.runner as l; assert 'splitbench.run' not in sys.modules, 'live imports run'; "
            "import splitbench.run; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
