"""Golden bitstreams: expected md5s and sizes live in tests/expected/<file>.json, one helper checks them.

Each entry names a codec, its options and how its md5 is taken (``digest``: the scheme it was
first recorded with, kept so no recorded value changes), over the payloads of the first 4
Fashion-MNIST test images. ``SPLITBENCH_REGEN_GOLDEN=1`` rewrites the files from what the code
produces now (after a retrained checkpoint or a deliberate wire-format change: review the diff);
otherwise a mismatch fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXPECTED = Path(__file__).resolve().parent / "expected"
REPO = EXPECTED.parent.parent
REGEN = os.environ.get("SPLITBENCH_REGEN_GOLDEN") == "1"
N_IMAGES = 4

DIGESTS = {  # scheme -> md5 over a list of payload byte strings
    "concat": lambda blobs: hashlib.md5(b"".join(blobs)).hexdigest(),
    "len32le": lambda blobs: hashlib.md5(b"".join(len(b).to_bytes(4, "little") + b for b in blobs)).hexdigest(),
    "len32be": lambda blobs: hashlib.md5(b"".join(len(b).to_bytes(4, "big") + b for b in blobs)).hexdigest(),
}


def cases(file: str) -> dict[str, dict[str, Any]]:
    """The entries of tests/expected/<file>.json (case name -> codec, options, digest, md5, sizes)."""
    return json.loads((EXPECTED / f"{file}.json").read_text())


def bound_codec(name: str, task: Any, **options: Any) -> Any:
    """A registered codec built with ``options`` and bound to ``task``."""
    from splitbench import create_codec

    codec = create_codec(name, **options)
    codec.bind(task)
    return codec


def encode_images(codec: Any, images: Any) -> list[bytes]:
    import torch

    with torch.inference_mode():
        return [p.data for p in codec.encode(codec.device_forward(images))]


def assert_golden(file: str, case: str, blobs: list[bytes]) -> None:
    """The payloads' md5 and sizes equal the recorded ones (or, with REGEN, become them)."""
    data = cases(file)
    entry = data[case]
    got = {"md5": DIGESTS[entry["digest"]](blobs), "sizes": [len(b) for b in blobs]}
    if REGEN:
        data[case] = {**entry, **got}
        (EXPECTED / f"{file}.json").write_text(json.dumps(data, indent=1) + "\n")
        pytest.skip(f"regenerated tests/expected/{file}.json [{case}]")
    assert got == {"md5": entry["md5"], "sizes": entry["sizes"]}, f"{file}[{case}] bitstream changed: {got}"


_SCRIPT = """
import hashlib, json, sys, torch
torch.set_num_threads(1)
from splitbench import create_codec
from splitbench.data import build_dataset
from splitbench.models import build_model
task = build_model({'name': 'vit_fmnist', 'checkpoint': None, 'pretrained': True})
ds = build_dataset({'name': 'fashion_mnist', 'split': 'test', 'root': None, 'limit': %d})
x = torch.stack([ds[i][0] for i in range(len(ds))])
out = {}
for case, entry in json.loads(sys.argv[1]).items():
    c = create_codec(entry['codec'], **entry['options']); c.bind(task)
    with torch.inference_mode():
        out[case] = [p.data.hex() for p in c.encode(c.device_forward(x))]
print(json.dumps(out))
""" % N_IMAGES


def assert_golden_in_fresh_process(file: str) -> None:
    """Every case of the file gives the recorded bytes in a new interpreter (1 torch thread)."""
    entries = cases(file)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(entries)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, entry in entries.items():
        blobs = [bytes.fromhex(h) for h in got[case]]
        assert DIGESTS[entry["digest"]](blobs) == entry["md5"], f"{file}[{case}] differs in a fresh process"
        assert [len(b) for b in blobs] == entry["sizes"]
