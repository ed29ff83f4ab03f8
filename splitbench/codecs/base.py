"""The codec protocol: a codec is the whole split, device half + wire format + server half.

The runner times the four stages separately, so a codec implements them as four methods:

    images --device_forward--> features --encode--> [Payload bytes] --(channel)-->
           --decode--> features --server_forward--> logits

``encode`` and ``decode`` must be each other's inverse on real bytes: the rate that splitbench
reports is ``len(payload.data)``, the bytes the decoder really decoded.

Devices (``runtime.device``): the model stages may run on a GPU, entropy coding never does.
``bind(task)`` moves the codec's own networks (:meth:`Codec.device_modules`: analysis/synthesis
transforms, ViT blocks, edge models) to the task model's device; every module that decides an
entropy-coding parameter (hyper-analysis and -synthesis, context models, quantised CDF tables and
the CDF index computation) is never listed there and stays on the CPU in float32. The wire side is
CPU-only by contract: ``device_forward`` returns CPU tensors (it ends with the copy back to host
memory, so that copy is part of the device stage's time), ``encode`` and ``decode`` take and return
CPU tensors, ``server_forward`` moves what ``decode`` returned to the device. So the encoder and
the decoder compute every CDF index from the same quantised symbols with the same CPU arithmetic
whichever device ran the other half, and a payload decodes bit-exactly across devices. What a GPU
can change is the device half's float output *before* quantisation (its last bits differ from the
CPU's), i.e. which symbols are sent, never whether they decode.
"""
from __future__ import annotations

import abc
import functools
import inspect
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch

from ..errors import ConfigError
from ..options import check, declared, plain

if TYPE_CHECKING:  # pragma: no cover
    from ..models import TaskModel
    from ..zoo import Weights


#: the task model a codec under construction is for (``create_codec(..., for_model=...)``): lets the
#: zoo pick a point trained for that model before bind() sees the model itself
_FOR_MODEL: ContextVar[str | None] = ContextVar("splitbench_codec_for_model", default=None)


@contextmanager
def building_for(model: str | None) -> Iterator[None]:
    """Codecs constructed inside this block resolve shipped weights for task model ``model``."""
    token = _FOR_MODEL.set(model)
    try:
        yield
    finally:
        _FOR_MODEL.reset(token)


class Payload:
    """What one sample puts on the wire.

    ``data`` is the exact byte string sent. ``local_prediction`` is set when the device answers by
    itself (e.g. entropy-aware offloading); then nothing is sent and ``data`` must be empty.
    ``estimated_bits`` is the entropy model's estimate (NaN where a codec has none), reported
    beside the real size, never instead of it. A codec may pass it as a zero-argument callable:
    the estimate is a measurement aid, not part of the method, so it is computed on first read,
    which the runner does after the timed stages; it never inflates the encode time.
    ``extras`` holds per-sample numbers a codec wants in the records (kept tokens, PSNR, ...).
    """

    __slots__ = ("data", "local_prediction", "_estimate", "extras")

    def __init__(self, data: bytes, local_prediction: int | None = None,
                 estimated_bits: float | Callable[[], float] = math.nan,
                 extras: dict[str, float] | None = None) -> None:
        self.data = data
        self.local_prediction = local_prediction
        self._estimate = estimated_bits
        self.extras = {} if extras is None else extras

    @property
    def offloaded(self) -> bool:
        return self.local_prediction is None

    @property
    def estimated_bits(self) -> float:
        if callable(self._estimate):
            self._estimate = float(self._estimate())
        return float(self._estimate)

    def __repr__(self) -> str:
        return (f"Payload({len(self.data)} bytes, local_prediction={self.local_prediction}, "
                f"extras={self.extras})")


class Codec(abc.ABC):
    """Base class of every registered codec.

    Subclasses declare their options as keyword arguments of ``__init__`` (the config keys under
    ``codec.``), ranges and choices as ``Annotated`` metadata (splitbench.options), and set
    ``name``. Every construction is checked against that declaration and recorded (``options()``). ``sends_image`` marks codecs whose payload is the network input
    (so bits per pixel are meaningful).
    """

    name: ClassVar[str] = ""
    sends_image: ClassVar[bool] = False
    #: per-sample numbers this codec adds to the records (keys of Payload.extras)
    extra_columns: ClassVar[tuple[str, ...]] = ()
    #: options a remote client may set to any (scalar) value when it opens a session on the edge
    #: server: the rate point and other knobs that pick among shipped weights. Every other option
    #: (architecture, training, checkpoint paths) is the server's: a client may only restate its
    #: default (splitbench.live.options). Default: none.
    client_options: ClassVar[frozenset[str]] = frozenset()
    #: options that only configure training: validated like the others, but not recorded in
    #: options() (they do not change an inference run's records)
    training_options: ClassVar[frozenset[str]] = frozenset({"train"})
    _options: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_options", False):
            cls.__init__ = _recording(init)  # type: ignore[method-assign]

    task: "TaskModel"
    #: where the codec's model stages run (``to``/``bind`` set it); entropy coding is always on the CPU
    device: torch.device = torch.device("cpu")

    def bind(self, task: "TaskModel") -> None:
        """Attach the server task model (frozen) before any stage runs, and move this codec's
        networks to the task model's device (the task model's owner decides where it runs)."""
        from ..runtime import module_device

        self.task = task
        self.to(module_device(task))

    def device_modules(self) -> list[torch.nn.Module]:
        """The networks of ``device_forward``/``server_forward`` that this codec owns (the task model
        is its owner's). Never an entropy model: those stay on the CPU. Default: none."""
        return []

    def to(self, device: torch.device | str) -> "Codec":
        """Run the model stages on ``device``: moves :meth:`device_modules` (entropy coding stays on the CPU)."""
        device = torch.device(device)
        for module in self.device_modules():
            module.to(device)
        self.device = device
        return self

    # -- device side -----------------------------------------------------------------------
    def device_forward(self, images: torch.Tensor) -> Any:
        """Device compute before coding (the backbone head) on CPU uint8 images; returns CPU tensors
        (what ``encode`` codes). Default: none, send the image."""
        return images

    @abc.abstractmethod
    def encode(self, features: Any) -> list[Payload]:
        """Turn the device features of a batch (CPU tensors) into one payload per sample."""

    # -- server side -----------------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, data: list[bytes]) -> Any:
        """Parse real bytes back into server-side features (CPU tensors); PayloadError on bad input."""

    def server_forward(self, features: Any) -> torch.Tensor:
        """Server compute after decoding, on ``self.device`` (logits may stay there). Default: the task
        model on a decoded image batch (it moves the CPU images to its device itself)."""
        return self.task(features)

    def max_payload_bytes(self) -> int:
        """The longest payload this bound codec can ever produce.

        Decoders reject longer payloads before any parsing, and the edge server caps a session's
        DATA frames at it, so no client can make either hold more than a codec legitimately needs.
        Default: 64 bytes per input element plus 4 KiB; codecs override it with a tight bound.
        """
        c, h, w = self.task.input_size
        return 64 * c * h * w + 4096

    # -- description -------------------------------------------------------------------------
    def rate_point(self) -> str:
        """Short text naming the operating point, e.g. ``q=50``."""
        return ""

    def series(self) -> str:
        """The curve this operating point belongs to in plots (codec + any non-rate variant)."""
        return self.name

    def options(self) -> dict[str, Any]:
        """Every declared option's value for this codec, defaults filled in, training knobs left out
        (part of the record cache key; what mode=live sends the edge server)."""
        return dict(getattr(self, "_options", {}))

    # -- weights -----------------------------------------------------------------------------
    @classmethod
    def from_weights(cls, weights: "Weights", **options: Any) -> "Codec":
        """This codec with in-memory ``weights`` instead of the zoo's (training evaluates through it).

        The ordinary ``__init__`` runs with ``options`` (every check included); only the codec's
        call to :meth:`weights` returns ``weights`` instead of resolving a file.
        """
        codec = cls.__new__(cls)
        codec._given_weights = weights
        codec.__init__(**options)  # type: ignore[misc]  (records options like any construction)
        return codec

    def weights(self, family: str, point: dict[str, Any], checkpoint: Any = None, train_hint: str = "") -> "Weights":
        """The weights this codec runs: given in memory, a user's ``checkpoint`` path, or the zoo's
        point for the task model the codec is built for (:func:`building_for`)."""
        given = self.__dict__.pop("_given_weights", None)
        if given is not None:
            return given
        from ..zoo import resolve

        return resolve(family, point=point, path=checkpoint, train_hint=train_hint, model=_FOR_MODEL.get())

    def fingerprint(self) -> dict[str, Any]:
        """Everything besides options that changes the records (e.g. checkpoint hashes)."""
        return {}


def accepted_options(cls: type[Codec]) -> list[str]:
    """Names of the keyword options a codec class accepts."""
    return [o.name for o in declared(cls.__init__)]


def check_options(cls: type[Codec], options: Any) -> None:
    """ConfigError for options that are not a mapping, unknown names, or values outside their
    declared kind, range or choices (splitbench.options), before anything is built."""
    check(options, declared(cls.__init__), "codec", cls.name or cls.__name__)


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a codec's ``__init__``: the outermost constructor checks the arguments against the
    declaration and records them, defaults filled in, as :meth:`Codec.options`."""

    @functools.wraps(init)
    def wrapper(self: Codec, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if cls.__init__ is wrapper:  # not a base class's __init__ reached through super()
            check_options(cls, kwargs)
            try:
                bound = inspect.signature(init).bind(self, *args, **kwargs)
            except TypeError as err:
                raise ConfigError(f"codec {cls.name!r}: {err}") from None
            bound.apply_defaults()
            values = dict(list(bound.arguments.items())[1:])
            check_options(cls, values)
            self._options = {k: plain(v) for k, v in values.items() if k not in cls.training_options}
        init(self, *args, **kwargs)

    wrapper._records_options = True  # type: ignore[attr-defined]
    return wrapper
