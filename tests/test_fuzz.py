"""Issue #11: every registered codec (new ones included, through the registry) survives a few
hundred mutated payloads decoded in a child process under a hard deadline: no hang, nothing but
PayloadError (with a message naming the codec, no address), bounded extra memory per call."""
from __future__ import annotations

import os
import random
import signal

import pytest

from splitbench import list_codecs
from splitbench.fuzz import FORGED, MEMORY_LIMIT_MIB, Child, build_codec, forger, fuzz_codec, mutations, seed_payloads

CASES = 200


@pytest.fixture(scope="module")
def seeds(task_model):
    return seed_payloads(list_codecs(), task=task_model)


@pytest.fixture(scope="module")
def shared():
    """One decoding child for the module (it loads one codec at a time), closed at the end."""
    holder: dict[str, Child | None] = {"child": None}
    yield holder
    if holder["child"] is not None:
        holder["child"].close()


@pytest.mark.parametrize("name", list_codecs())
def test_no_payload_hangs_crashes_or_bloats_a_decoder(name, seeds, shared, task_model):
    seal = forger(build_codec(name, task_model)) if name in FORGED else None
    stats, shared["child"] = fuzz_codec(name, CASES, seeds, seed=11, timeout=30, big=2 << 20, seal=seal,
                                        child=shared["child"])
    assert stats.tried == CASES
    assert stats.hangs == 0 and stats.crashes == 0, stats.failures[:5]
    assert stats.peak_mib <= MEMORY_LIMIT_MIB, f"{stats.peak_mib:.1f} MiB in one call"
    assert stats.clean >= CASES // 2  # the mutations really are bad payloads, mostly
    assert stats.accepted >= len(seeds[name])  # and the real payloads really decode


def test_a_stalled_decoder_is_detected_and_killed(shared):
    """The harness itself: a child that stops answering is a hang, and SIGKILL ends it."""
    child = Child()
    try:
        child.load("raw")
        assert child.ask(bytes(784), timeout=60)["outcome"] == "accepted"
        os.kill(child.proc.pid, signal.SIGSTOP)  # as stuck as a C++ loop holding the GIL
        assert child.ask(bytes(784), timeout=1) is None and child.alive()
    finally:
        child.close()
    assert not child.alive()


def test_mutations_cover_every_kind_and_are_reproducible():
    own, foreign = [bytes(range(40))], [b"\xff\xd8" + bytes(30)]
    seal = lambda body: b"SEAL" + body  # noqa: E731
    first = list(mutations(random.Random(1), own, foreign, 400, seal, big=1 << 16))
    again = list(mutations(random.Random(1), own, foreign, 400, seal, big=1 << 16))
    assert first == again
    kinds = {k for k, _ in first}
    assert kinds >= {"seed", "truncate", "bitflip", "overwrite", "insert", "delete", "trailing", "duplicate",
                     "splice", "garbage", "garbage_words", "constant", "foreign", "huge", "forged"}
    assert all(d.startswith(b"SEAL") for k, d in first if k == "forged")
    assert max(len(d) for _, d in first) > 1 << 14
