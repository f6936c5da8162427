"""A user's own data: ``--data pkg.mod:fn`` returns the train, val and test torch ``Dataset``s of any
task (val may be None: it is then carved from train), as a tuple or a dict with those keys; items are
``(input, target)``. ``--metric pkg.mod:fn`` scores a split: ``fn(outputs, targets) -> float`` on the
whole split's model outputs and targets (torch tensors), higher is better.

Both are code the user names. Named on the command line, that is the consent; read back from a
checkpoint (which records them so deploy and export can reuse them), they run only under the same
rule as architectures (``model_io.Consent``: the same reference given again, or --trust-code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, UnsafeFileError, first_line
from ..model_io import Consent, import_callable
from .stream import StreamDataset

_cache: dict[str, dict] = {}   # one call of a factory per process: train_val() and test() share it


def is_ref(data: str) -> bool:
    """``pkg.mod:fn`` (a path never has a colon after a dotted module name and no slash)."""
    mod, sep, attr = data.partition(":")
    return bool(sep and mod and attr) and "/" not in data and "\\" not in data and not Path(data).exists()


def check_consent(ref: str, option: str, consent: Consent | None, source: str) -> None:
    """A reference a file recorded runs only with the user's consent (the architectures' rule)."""
    if consent is None or not consent.allows(ref):
        raise UnsafeFileError(f"{source} names the {option[2:]} function '{ref}'; calling it imports and runs that "
                              f"code: re-run with {option} {ref} if that is the one you expect, or --trust-code "
                              "if you trust the file's source")


def load_metric(ref: str) -> Callable:
    return import_callable(ref, "metric")


def _describe(ds, ref: str, split: str) -> StreamDataset:
    try:
        first = ds[0]
        x = first[0]
    except Exception as e:   # the user's dataset failed: its message, not our traceback
        raise InputError(f"{ref}: item 0 of the {split} split cannot be read as (input, target): "
                         f"{type(e).__name__}: {first_line(e)}") from None
    shape = tuple(int(d) for d in np.shape(x))
    classes = getattr(ds, "classes", None)
    targets = getattr(ds, "targets", None)
    labels = None
    if targets is not None:
        t = np.asarray(targets)
        labels = t.astype(np.int64) if t.ndim == 1 and np.issubdtype(t.dtype, np.integer) else None
    num = len(classes) if classes is not None else (int(labels.max()) + 1 if labels is not None and len(labels) else None)
    return StreamDataset(ds, f"{ref}/{split}", shape, num, labels=labels)


def open_split(ref: str, split: str) -> StreamDataset | None:
    """The ``split`` ("train" | "val" | "test") the factory returns; None for a val it leaves out."""
    if ref not in _cache:
        fn = import_callable(ref, "data factory")
        try:
            got = fn()
        except Exception as e:
            raise InputError(f"data factory '{ref}' failed: {type(e).__name__}: {first_line(e)}") from None
        if isinstance(got, dict):
            got = {k: got.get(k) for k in ("train", "val", "test")}
        elif isinstance(got, (tuple, list)) and len(got) == 3:
            got = dict(zip(("train", "val", "test"), got))
        else:
            raise InputError(f"data factory '{ref}' must return (train, val, test) Datasets or a dict with those "
                             f"keys, not a {type(got).__name__}")
        if got["train"] is None or got["test"] is None:
            raise InputError(f"data factory '{ref}' returned no {'train' if got['train'] is None else 'test'} split")
        _cache.clear()
        _cache[ref] = got
    ds = _cache[ref][split]
    return None if ds is None else _describe(ds, ref, split)
