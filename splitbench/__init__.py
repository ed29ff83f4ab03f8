"""splitbench: codecs for split computing / device-edge co-inference, compared on one footing."""
import warnings

# compressai scripts a few helpers with torch.jit.script, which torch >= 2.10 flags on every import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from .codecs import Codec, Payload, create_codec, list_codecs, register_codec
from .errors import CheckpointError, ConfigError, DataError, PayloadError, SplitbenchError

__version__ = "0.1.0"

__all__ = [
    "Codec", "Payload", "create_codec", "list_codecs", "register_codec",
    "SplitbenchError", "ConfigError", "DataError", "CheckpointError", "PayloadError", "__version__",
]
