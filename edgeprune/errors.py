"""Errors a user can cause. The CLI prints them as `error: <message>` and exits with code 2.

Bugs are not EdgepruneErrors: they stay tracebacks.
"""


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
