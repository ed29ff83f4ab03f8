"""A test-only codec whose decoder never returns on one payload (server isolation tests).

Imported into the edge server's workers with ``python -m splitbench.serve --import spin_codec``; never
registered otherwise. It stands in for compressai's C++ rANS decoder looping on a damaged stream: the
payload ``b"spin"`` makes ``decode`` block every signal and then sit in a C call that holds the GIL
and never returns, so neither ``signal.alarm``, a watchdog thread nor SIGTERM can end it; only
SIGKILL does. (A C-level sleep rather than a busy loop, so the test does not burn a shared CPU.)
Any other payload decodes to a blank image, so the same session can be served afterwards.
"""
from __future__ import annotations

import ctypes
import signal

import torch

from splitbench.codecs import Codec, Payload, register_codec

SPIN = b"spin"


def hold_the_gil_forever() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
    while True:
        libc.sleep(3600)


@register_codec("spin")
class SpinCodec(Codec):
    """Sends 2 bytes per image; decodes ``b"spin"`` forever."""

    def encode(self, features: torch.Tensor) -> list[Payload]:
        return [Payload(b"ok") for _ in features]

    def decode(self, data: list[bytes]) -> torch.Tensor:
        if SPIN in data:
            hold_the_gil_forever()
        return torch.zeros(len(data), *self.task.input_size, dtype=torch.uint8)
