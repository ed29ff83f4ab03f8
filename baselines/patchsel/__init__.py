"""Attention-aware patch selection (``patchsel``) and the edge-only reference (``local``)."""
from . import codec  # noqa: F401  (registers patchsel and local)
