"""Errors that splitbench reports to the user as one readable line.

Every failure a user can cause (a wrong name, a missing file, a corrupt payload) raises a subclass
of :class:`SplitbenchError`; the runner prints ``splitbench: error: <message>`` and exits non-zero.
"""
from __future__ import annotations


class SplitbenchError(Exception):
    """Base class: the message alone must tell the user what is wrong and what is valid."""


class ConfigError(SplitbenchError, ValueError):
    """A config value or override that is unknown or malformed."""


class DataError(SplitbenchError):
    """A dataset that cannot be found or read."""


class CheckpointError(SplitbenchError):
    """A checkpoint that is missing, corrupt or does not match its manifest entry."""


class PayloadError(SplitbenchError, ValueError):
    """Bytes handed to a decoder that are not a valid payload of that codec."""
