"""Exceptions whose message is meant for the user, as-is.

The CLI prints ``str(error)`` on one line and exits non-zero; the HTTP service
turns them into a JSON error with a 4xx code. Anything else is a bug.
"""


class RsovError(Exception):
    """Base class: the message is a complete sentence a user can act on."""


class InputError(RsovError):
    """The request is wrong: bad raster, extent, CRS, vocabulary, band list or output path."""


class WeightsMissingError(RsovError):
    """Model weights are not in the cache and could not be downloaded."""


class CancelledError(RsovError):
    """The job was cancelled by the user."""
