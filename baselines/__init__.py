"""Codec implementations. Importing this package registers every built-in codec."""
from . import image_codecs, raw  # noqa: F401
