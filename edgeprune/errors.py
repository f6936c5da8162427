"""Errors a user can cause. The CLI prints them as `error: <message>` and exits with code 2.

Bugs are not EdgepruneErrors: they stay tracebacks.
"""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), at most 300 characters:
    what a one-line error can quote of a library's failure."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


class EdgepruneError(Exception):
    """Base class: one-line message, user-fixable."""


class InputError(EdgepruneError):
    """A file, path or option the user gave is wrong (missing, corrupt, exists, out of range)."""


class UnknownNameError(EdgepruneError):
    """An unknown method, target, architecture or data set name."""


class UnsafeFileError(EdgepruneError):
    """A file would need a full unpickle; only allowed with --trust-pickle."""


class ShapeError(EdgepruneError):
    """Input shape does not fit the model."""


class ParityError(EdgepruneError):
    """An exported or built model disagrees with the PyTorch model past the tolerance."""


class RemoteError(EdgepruneError):
    """The board cannot be reached, refuses us, or failed a step: host, key, disk or link trouble."""
