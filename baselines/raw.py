"""``raw``: uncompressed offload, the reference row of every table.

The payload is the input's uint8 pixel buffer exactly as the camera delivers it (C*H*W bytes; the
shape is agreed in advance, like the quantisation tables of abbreviated JPEG, so no header).
"""
from __future__ import annotations

import numpy as np
import torch

from splitbench.codecs import Codec, Payload, register_codec
from splitbench.errors import PayloadError


@register_codec("raw")
class RawCodec(Codec):
    sends_image = True

    def __init__(self) -> None:
        pass

    def encode(self, features: torch.Tensor) -> list[Payload]:
        return [Payload(img.contiguous().numpy().tobytes()) for img in features.to(torch.uint8)]

    def max_payload_bytes(self) -> int:
        """Exactly one uint8 pixel buffer."""
        return int(np.prod(self.task.input_size))

    def decode(self, data: list[bytes]) -> torch.Tensor:
        shape = tuple(self.task.input_size)
        expected = int(np.prod(shape))
        out = []
        for i, blob in enumerate(data):
            if len(blob) != expected:
                raise PayloadError(f"raw payload {i} has {len(blob)} bytes, expected {expected} "
                                   f"(a {'x'.join(map(str, shape))} uint8 image)")
            out.append(torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).reshape(shape).copy()))
        return torch.stack(out)

    def rate_point(self) -> str:
        return "uint8"
