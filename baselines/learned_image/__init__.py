"""Learned image codecs on compressai architectures: ``elic`` (ELIC) and ``bmshj2018`` (scale hyperprior).

codec.py: the split (g_a on the device, one rANS stream per image, g_s + server ViT on the server);
nets.py: the networks sized for small images; stream.py: the single-stream range coding;
fit.py: ``python -m splitbench.train codec=elic codec.lmbda=...``.
"""
from .codec import Bmshj2018Codec, ElicCodec  # noqa: F401  (registers)
