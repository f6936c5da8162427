"""The data files edgeprune ships inside the package: target files (`targets/*.toml`) and INT8
calibration images (`calibration/*.npz`).

They are package data, found with `importlib.resources`, so a plain (non-editable) `pip install`
has them wherever it puts the package; nothing is looked up relative to a source checkout.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib.resources import as_file, files
from pathlib import Path

_EXTRACTED = contextlib.ExitStack()
atexit.register(_EXTRACTED.close)


def shipped_path(*parts: str) -> Path:
    """A shipped file or folder as a filesystem path (`shipped_path("targets")`)."""
    resource = files(__name__).joinpath(*parts)
    if isinstance(resource, Path):
        return resource
    # An install that is not plain files (a zip): extract once, for the life of the process.
    return _EXTRACTED.enter_context(as_file(resource))
