"""File helpers every stage shares; no torch or onnx imports, so device-side code can use them too."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import InputError


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None], *, force: bool = False) -> Path:
    """Write ``data`` (bytes, or a function writing to a file object) to a temp file beside ``path``, then rename.

    Readers see the old file or the new one, never half of one; a failed write leaves nothing behind.
    Refuses to replace an existing file unless ``force``.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a directory")
    if path.exists() and not force:
        raise InputError(f"output {path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def link_or_copy(src: str | Path, dst: str | Path) -> Path:
    """``dst`` as a hard link to ``src`` (no second copy of an engine on a small board's disk), or a copy
    where the file system does not link; an existing ``dst`` is replaced."""
    import shutil

    dst = Path(dst)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst
