"""Third-party plugins: a codec from an installed distribution's entry point runs like a built-in.

The throwaway distribution is a package plus its ``.dist-info`` (METADATA + entry_points.txt) in a
temporary directory on PYTHONPATH, which is all ``importlib.metadata`` needs; nothing is pip
installed and the repository is not touched.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, _CACHE

PLUGIN = '''
"""A toy codec: the raw pixels XORed with a key byte (lossless, 1 byte per pixel)."""
import torch

from splitbench import Codec, Payload


class XorRaw(Codec):
    sends_image = True

    def __init__(self, key: int = 5, note: str = "toy"):
        self.key = key

    def encode(self, features):
        return [Payload(bytes(b ^ self.key for b in img.flatten().tolist())) for img in features]

    def decode(self, data):
        c, h, w = self.task.input_size
        rows = [torch.tensor([b ^ self.key for b in d], dtype=torch.uint8).view(c, h, w) for d in data]
        return torch.stack(rows)

    def rate_point(self):
        return f"key={self.key}"


class Stripes(torch.utils.data.Dataset):
    """A dataset plugin: n synthetic 28x28 grey images (striped), labelled by stripe period."""

    def __init__(self, n: int = 8, split: str = "test"):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        period = 2 + i % 5
        row = (torch.arange(28) // period % 2 * 255).to(torch.uint8)
        return row.expand(1, 28, 28).clone(), i % 10
'''


def _distribution(root: Path, entry_points: str, modules: dict[str, str]) -> Path:
    for name, text in modules.items():
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(textwrap.dedent(text))
    info = root / "sbplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sbplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root


def _run(plugin_root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # the checkout on PYTHONPATH too: the test must use this copy of splitbench from any directory
    env = dict(os.environ, SPLITBENCH_CACHE=_CACHE, HYDRA_FULL_ERROR="0",
               PYTHONPATH=os.pathsep.join([str(plugin_root), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "splitbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _snapshot(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_entry_point_codec_runs_without_yaml_from_any_directory(tmp_path):
    plugin = _distribution(tmp_path / "site", "[splitbench.codecs]\nxorraw = sbplug:XorRaw\n\n"
                           "[splitbench.datasets]\nstripes = sbplug:Stripes\n", {"sbplug": PLUGIN})
    work = tmp_path / "work"
    work.mkdir()
    before = _snapshot(REPO / "conf") | _snapshot(REPO / "results")

    proc = _run(plugin, work, "codec=xorraw", "codec.key=7", "data.limit=20", "measure.progress=false")
    assert proc.returncode == 0, proc.stderr
    assert "| xorraw" in proc.stdout and "key=7" in proc.stdout
    files = list((work / "results" / "runs").rglob("results.csv"))
    assert len(files) == 1, "the run directory goes under the current directory"
    row = pd.read_csv(files[0]).iloc[0]
    assert row.codec == "xorraw" and row.n == 20 and row.bytes_per_image == 784
    assert row.agreement == 1.0  # lossless: same predictions as raw

    # its options come from its keyword defaults, and typos get the same one-line error as built-ins
    bad = _run(plugin, work, "codec=xorraw", "codec.kye=7", "data.limit=4")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert lines[0] == ("splitbench: error: codec 'xorraw' has no option 'codec.kye' (did you mean 'codec.key'?); "
                        "valid options: codec.key, codec.note (prefix with + to add a new key)")

    # a dataset plugin is selected the same way, its options from its keyword defaults
    data = _run(plugin, work, "codec=xorraw", "data=stripes", "data.n=6", "measure.progress=false",
                "hydra.run.dir=stripes_run")
    assert data.returncode == 0, data.stderr
    row = pd.read_csv(work / "stripes_run" / "results.csv").iloc[0]
    assert row.data == "stripes" and row.n == 6 and row.bytes_per_image == 784
    assert _snapshot(REPO / "conf") | _snapshot(REPO / "results") == before, "the repository was touched"


def test_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path):
    plugin = _distribution(tmp_path / "site", "[splitbench.codecs]\nbroken = sbbroken:Codec\n",
                           {"sbbroken": "import no_such_module_for_splitbench\n"})
    proc = _run(plugin, tmp_path, "codec=broken", "data.limit=4")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("splitbench: error: codec plugin 'broken' (sbbroken:Codec from sbplug) failed "
                               "to import: ModuleNotFoundError"), lines[0]
    assert not (tmp_path / "results").exists()


def test_builtins_are_declared_as_entry_points():
    """The fallback a source checkout uses reads pyproject.toml: the same declarations a wheel carries."""
    from splitbench.codecs import CODECS
    from splitbench.data import DATASETS
    from splitbench.models import MODELS
    from splitbench.registry import source_entry_points

    assert [ep.value for ep in source_entry_points("splitbench.codecs")] == ["baselines"]
    assert {"jpeg", "png", "webp", "raw", "tofc", "elic"} <= set(CODECS.names())
    assert {"fashion_mnist", "imagefolder", "photos"} <= set(DATASETS.names())
    assert {"vit_fmnist", "vit_edge", "tf_efficientnet_lite0"} <= set(MODELS.names())


@pytest.mark.parametrize("args,line", [
    (["bandwith=10mbps"], "unknown config key 'bandwith' (did you mean 'bandwidth'?); valid keys: bandwidth, "
                          "codec, data, device, live, measure, mode, model, results, runtime, server"),
    (["measure.thread=1"], "unknown config key 'measure.thread' (did you mean 'measure.threads'?); valid keys: "
                           "measure.batch_size, measure.cache, measure.clock, measure.progress, measure.reference, "
                           "measure.threads"),
    (["results.resum=true"], "unknown config key 'results.resum' (did you mean 'results.resume'?); valid keys: "
                             "results.resume"),
    (["-m", "codec=jpeg,png", "codec.quality=5"], "codec 'png' has no option 'codec.quality'"),
    (["codec=null", "codec.quality=5"], "codec.quality is set but no codec is selected"),
])
def test_unknown_keys_are_one_line(capsys, args, line):
    from splitbench.cli import guard_overrides

    with pytest.raises(SystemExit) as exit_:
        guard_overrides(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("splitbench: error: " + line), err


@pytest.mark.parametrize("args", [
    ["codec=jpeg", "codec.quality=5", "bandwidth.mbps=3", "+extra.key=1", "measure.threads=1"],
    ["-m", "codec=jpeg,png", "bandwidth=1mbps,10mbps", "hydra.run.dir=/tmp/x", "data=imagefolder", "data.root=/x"],
])
def test_valid_overrides_pass_the_guard(args):
    from splitbench.cli import guard_overrides

    guard_overrides(args)
