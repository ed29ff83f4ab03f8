"""Codec implementations. Importing this package registers every built-in codec."""
from . import image_codecs, raw  # noqa: F401
from . import patchsel  # noqa: F401  (patchsel, local)
from . import frankensplit  # noqa: F401  (frankensplit)
from . import tofc  # noqa: F401  (tofc)
from . import learned_image  # noqa: F401  (elic, bmshj2018)
