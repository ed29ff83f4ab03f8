"""splitbench: codecs for split computing / device-edge co-inference, compared on one footing."""
from .codecs import Codec, Payload, create_codec, list_codecs, register_codec
from .errors import CheckpointError, ConfigError, DataError, PayloadError, SplitbenchError

__version__ = "0.1.0"

__all__ = [
    "Codec", "Payload", "create_codec", "list_codecs", "register_codec",
    "SplitbenchError", "ConfigError", "DataError", "CheckpointError", "PayloadError", "__version__",
]
