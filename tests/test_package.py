"""Packaging and walls: the installed package runs from any directory; layers import only what they may."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, _CACHE

TORCH_FREE = ("splitbench.latency", "splitbench.channel", "splitbench.compute", "splitbench.metrics",
              "splitbench.records", "splitbench.results", "splitbench.cli", "splitbench.paths")
FRONT = ("splitbench.run", "splitbench.report", "splitbench.cli", "splitbench.figures", "splitbench.__main__",
         "splitbench.benchmark")


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (``from a import b`` counts as a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-node.level])
            base = f"{package}.{node.module}" if node.module else package
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def test_torch_free_modules_import_without_torch():
    code = "import sys; sys.modules['torch'] = None; import " + ", ".join(TORCH_FREE) + \
           "; from splitbench import ConfigError, __version__; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_codec_packages_never_import_the_runner_report_or_cli():
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & set(FRONT))
                 for p in sorted((REPO / "baselines").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_report_and_figures_read_result_files_only():
    inner = {"splitbench.run", "splitbench.measure", "splitbench.codecs", "splitbench.models", "splitbench.data",
             "baselines", "torch"}
    for name in ("report", "figures", "results"):
        used = {m for m in _imports(REPO / "splitbench" / f"{name}.py") if m.split(".")[0] in ("splitbench",
                                                                                              "baselines", "torch")}
        assert not {m for m in used if any(m == i or m.startswith(i + ".") for i in inner)}, (name, used)


def test_wall_scan_sees_relative_and_absolute_imports(tmp_path):
    """The scan above is not vacuous: it does catch the imports it forbids."""
    names = _imports(REPO / "splitbench" / "__main__.py")
    assert "splitbench.cli.guard_overrides" in names and "splitbench.run" in names


def test_figure_suites_are_configuration():
    from splitbench.figures import SUITE_ARGS, SUITES, load_suites

    assert set(SUITES) == {p.stem for p in (REPO / "conf" / "figures").glob("*.yaml")}
    assert SUITES["fashion_mnist"]["jpeg"] == ["codec=jpeg", "codec.quality=5,10,20,35,50,75,95"]
    assert SUITE_ARGS["photos"] == ["data=photos", "model=efficientnet_lite0"]
    assert load_suites(REPO / "conf" / "figures") == (SUITES, SUITE_ARGS)


@pytest.mark.slow
def test_non_editable_install_runs_from_any_directory(tmp_path):
    """``pip install .`` into a fresh venv, then ``splitbench codec=jpeg data.limit=100`` elsewhere."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # build from a copy of the checkout (an in-tree build would leave build/ behind in it); the venv
    # sees the system site-packages (pip, setuptools, torch...), so nothing is downloaded
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "results", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", str(src)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SPLITBENCH_CACHE=_CACHE, HYDRA_FULL_ERROR="0")

    where = subprocess.run([str(py), "-c", "import sys; sys.modules['torch'] = None; import splitbench.latency, "
                            "splitbench.paths as p; print(p.__file__); print(p.CONF_DIR)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    module_file, conf_dir = where.stdout.split()
    assert Path(module_file).is_relative_to(env_dir), "the installed copy, not the checkout, must be imported"
    assert Path(conf_dir) == Path(module_file).parent / "_shipped" / "conf"

    proc = subprocess.run([str(env_dir / "bin" / "splitbench"), "codec=jpeg", "data.limit=100",
                           "measure.progress=false"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| jpeg" in proc.stdout and "| raw" in proc.stdout and "bytes/img" in proc.stdout
    files = list((work / "results" / "runs").rglob("results.csv"))
    assert len(files) == 1
    row = pd.read_csv(files[0]).iloc[0]
    assert row.n == 100 and 0.5 < row.accuracy <= 1

    bad = subprocess.run([str(env_dir / "bin" / "splitbench"), "bandwith=10mbps"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("splitbench: error: unknown config key 'bandwith'")
