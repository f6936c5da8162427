"""Data sets. The built-in ones (Fashion-MNIST / MNIST from IDX files, sklearn digits) and .npz files
are in-memory arrays (``ArrayDataset``): images float32 N x C x H x W in [0, 1], labels int64, small
enough to hold, which keeps training loops free of DataLoader overhead on a 2-core machine. Image
folders (``imagefolder``) and a user's ``pkg.mod:fn`` (``factory``) are read as they are used
(``stream.StreamDataset``). ``open_split`` opens any of them.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import InputError, UnknownNameError

if TYPE_CHECKING:
    from .preprocess import Preprocess
    from .stream import StreamDataset

IDX_DATASETS = {"fashion-mnist": "fashion-mnist", "mnist": "mnist"}
NAMES = sorted([*IDX_DATASETS, "digits"])
DEFAULT_ROOT = Path(os.environ.get("EDGEPRUNE_DATA_ROOT", "/usr/share/datasets"))
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class ArrayDataset:
    """Images ``x`` (float32, N x C x H x W, in [0, 1]) and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray
    name: str
    metric: Callable | None = field(default=None, repr=False)   # the task's own (--metric); None: top-1

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise InputError(f"data set {self.name}: {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self.y) else 0

    def take(self, idx: np.ndarray, name: str | None = None) -> "ArrayDataset":
        return ArrayDataset(self.x[idx], self.y[idx], name or self.name, self.metric)

    def head(self, n: int | None) -> "ArrayDataset":
        """A seeded random subset of ``n`` samples (all if n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(0).permutation(len(self))[:n])
        return self.take(idx, f"{self.name}[:{n}]")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise InputError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data, found {data.size}")
    return data.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    raise InputError(f"data set file {stem}[.gz] not found in {root} "
                     f"(install with `apt-get install -y dataset-fashion-mnist` or pass --data-dir)")


def _load_idx(name: str, split: str, data_dir: Path | None) -> ArrayDataset:
    root = Path(data_dir) if data_dir else DEFAULT_ROOT / IDX_DATASETS[name]
    img_stem, lbl_stem = _IDX_FILES[split]
    x = _read_idx(_find_idx(root, img_stem))
    y = _read_idx(_find_idx(root, lbl_stem))
    return ArrayDataset(_to_float(x), y.astype(np.int64), f"{name}/{split}")


def _load_digits(split: str) -> ArrayDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    n_test = len(x) // 5
    idx = order[:n_test] if split == "test" else order[n_test:]
    return ArrayDataset(x[np.sort(idx)], d.target[np.sort(idx)].astype(np.int64), f"digits/{split}")


def _to_float(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(f"images must be N x H x W or N x C x H x W, got shape {tuple(x.shape)}")
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 255.0)
    return np.ascontiguousarray(x, dtype=np.float32)


NPZ_SPLITS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}
HELD_OUT = 5   # a single-split file keeps every 5th of a seeded shuffle (20 %) as its held-out test part


def load_npz(path: Path, split: str | None = None) -> ArrayDataset | None:
    """An .npz of images (N x C x H x W or N x H x W, uint8 0-255 or float) and integer labels.

    A file may carry its own splits (``x_train``, ``y_train``, ``x_test``, ``y_test``, optional
    ``x_val``, ``y_val``); ``split`` picks one (None for a val it does not have). A single-split file
    (``x``, ``y``) is returned whole when ``split`` is None (calibration sets); for "train" / "test" it is
    cut into a seeded 80 % and a held-out 20 %, so training on it never reports its training data as
    test accuracy."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if {"x_train", "y_train", "x_test", "y_test"} <= files and split is not None:
                keys = NPZ_SPLITS[split]
                if keys[0] not in files:
                    return None
                x, y, name = z[keys[0]], z[keys[1]], f"{path.stem}/{split}"
            elif "x" in files and "y" in files:
                x, y, name = z["x"], z["y"], path.stem
            else:
                raise InputError(f"{path} must hold arrays 'x' and 'y', or x_train, y_train, x_test, y_test "
                                 f"(found: {', '.join(z.files) or 'none'})")
    except InputError:
        raise
    except Exception as e:  # zipfile/ValueError/OSError: all mean the same thing to a user
        raise InputError(f"cannot read {path} as .npz: {e}") from None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: labels must be a 1-D array of integers")
    ds = ArrayDataset(_to_float(x), y.astype(np.int64), name)
    if name != path.stem or split is None:
        return ds
    if split == "val":
        return None
    order = np.random.default_rng(0).permutation(len(ds))
    held = np.zeros(len(ds), bool)
    held[order[: len(ds) // HELD_OUT]] = True
    if split == "test":
        return ds.take(np.flatnonzero(held), f"{path.stem}/held-out 20 % (the file has no test split)")
    return ds.take(np.flatnonzero(~held), f"{path.stem}/train (80 %; 20 % held out for test)")


def load_dataset(data: str, split: str = "train", data_dir: str | Path | None = None,
                 limit: int | None = None) -> ArrayDataset:
    """Load ``split`` ("train" | "test") of a named data set, or the .npz at path ``data`` (its own
    splits, or a single-split file's seeded 80 % / held-out 20 %, see ``load_npz``)."""
    if split not in _IDX_FILES:
        raise InputError(f"unknown split '{split}' (train or test)")
    if data in IDX_DATASETS:
        ds = _load_idx(data, split, Path(data_dir) if data_dir else None)
    elif data == "digits":
        ds = _load_digits(split)
    elif data.endswith(".npz") or os.sep in data or Path(data).exists():
        path = Path(data)
        if not path.is_file():
            raise InputError(f"data file not found: {path}")
        ds = load_npz(path, split)
    else:
        raise UnknownNameError(f"unknown data set '{data}' (available: {', '.join(NAMES)}, an .npz, an image "
                               "folder or package.module:function)")
    return ds.head(limit)


def open_split(data: str, split: str, data_dir: str | Path | None = None, limit: int | None = None,
               preprocess: "Preprocess | None" = None) -> "ArrayDataset | StreamDataset | None":
    """``split`` ("train" | "val" | "test") of any data source: a built-in name, an .npz, an image
    folder (read with ``preprocess``, by default its first image's size) or a ``pkg.mod:fn`` factory
    (the caller has checked consent). "val" is None where the source has none: carve it from train."""
    from . import factory, imagefolder

    if factory.is_ref(data):
        ds = factory.open_split(data, split)
    elif imagefolder.is_image_folder(data):
        ds = imagefolder.open_split(data, split, preprocess or imagefolder.default_preprocess(data))
    elif split == "val":
        ds = load_npz(Path(data), "val") if data.endswith(".npz") and Path(data).is_file() else None
    else:
        ds = load_dataset(data, split, data_dir)
    return None if ds is None else ds.head(limit)


def preprocessing(data: str, preprocess: dict | None = None) -> str:
    """How the loader of ``data`` turns stored images into model inputs: what a model trained on it
    expects, recorded in its ONNX metadata (`edgeprune.preprocess`). ``preprocess``: the recorded
    ``Preprocess.to_dict()`` of an image folder."""
    if preprocess is not None:
        from .preprocess import Preprocess

        return Preprocess.from_dict(preprocess).describe()
    from .factory import is_ref

    if data in IDX_DATASETS:
        scale = "uint8 pixels / 255"
    elif data == "digits":
        scale = "pixel values 0-16 / 16"
    elif is_ref(data):
        return f"as {data} returns them"
    else:
        scale = "uint8 pixels / 255 (float arrays as stored)"
    return f"{scale} -> float32 N x C x H x W in [0, 1]; no mean/std normalization"


def train_val_split(ds: ArrayDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Carve a validation split out of training data (tuning never sees the test split)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = max(1, int(round(len(ds) * val_fraction)))
    return (ds.take(np.sort(order[n_val:]), ds.name + ":train"),
            ds.take(np.sort(order[:n_val]), ds.name + ":val"))


def calibration_sample(ds: "ArrayDataset | StreamDataset", n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced sample of ``n`` images as uint8 (what calibration/*.npz store; a streamed set's
    normalised inputs, which do not fit uint8, as float16). A stream
    whose labels are unknown without reading it (a factory's Dataset without ``targets``) gives a
    seeded random sample."""
    labels = ds.y if isinstance(ds, ArrayDataset) else ds.labels
    if labels is None:
        sample = ds.head(n).arrays()
        return sample.x, sample.y
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    idx = np.concatenate([p[: n // len(classes) + (1 if i < n % len(classes) else 0)] for i, p in enumerate(per)])
    idx = np.sort(idx)
    if isinstance(ds, ArrayDataset):
        return np.round(ds.x[idx] * 255).astype(np.uint8), ds.y[idx]
    sample = ds.take(idx).arrays()
    return _compact(sample.x), sample.y


def _compact(x: np.ndarray) -> np.ndarray:
    """[0, 1] images as uint8 (what the loaders read back / 255), normalised ones as float16: a 512-image
    set of 3 x 224 x 224 inputs is 77 MB as uint8, 308 MB as float32."""
    if len(x) and 0.0 <= x.min() and x.max() <= 1.0:
        return np.round(x * 255).astype(np.uint8)
    return x.astype(np.float16)
