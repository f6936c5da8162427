"""Data sets as in-memory arrays: Fashion-MNIST / MNIST (IDX files), sklearn digits, or an .npz.

Images are float32 N x C x H x W in [0, 1]; labels int64. Small enough to hold in memory, which
keeps training loops free of DataLoader overhead on a 2-core machine.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, UnknownNameError

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
        return ArrayDataset(self.x[idx], self.y[idx], name or self.name)

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


def load_npz(path: Path) -> ArrayDataset:
    """An .npz with arrays ``x`` (N x C x H x W or N x H x W, uint8 0-255 or float) and ``y``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise InputError(f"{path} must hold arrays 'x' and 'y' (found: {', '.join(z.files) or 'none'})")
            x, y = z["x"], z["y"]
    except InputError:
        raise
    except Exception as e:  # zipfile/ValueError/OSError: all mean the same thing to a user
        raise InputError(f"cannot read {path} as .npz: {e}") from None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: 'y' must be a 1-D array of integer labels")
    return ArrayDataset(_to_float(x), y.astype(np.int64), path.stem)


def load_dataset(data: str, split: str = "train", data_dir: str | Path | None = None,
                 limit: int | None = None) -> ArrayDataset:
    """Load ``split`` ("train" | "test") of a named data set, or the .npz at path ``data``.

    An .npz is one split: it is returned whole for either split.
    """
    if split not in _IDX_FILES:
        raise InputError(f"unknown split '{split}' (train or test)")
    if data in IDX_DATASETS:
        ds = _load_idx(data, split, Path(data_dir) if data_dir else None)
    elif data == "digits":
        ds = _load_digits(split)
    elif data.endswith(".npz") or os.sep in data or Path(data).exists():
        path = Path(data)
        if not path.exists():
            raise InputError(f"data file not found: {path}")
        ds = load_npz(path)
    else:
        raise UnknownNameError(f"unknown data set '{data}' (available: {', '.join(NAMES)}, or a path to an .npz)")
    return ds.head(limit)


def preprocessing(data: str) -> str:
    """How the loader of ``data`` turns stored images into model inputs: what a model trained on it
    expects, recorded in its ONNX metadata (`edgeprune.preprocess`)."""
    if data in IDX_DATASETS:
        scale = "uint8 pixels / 255"
    elif data == "digits":
        scale = "pixel values 0-16 / 16"
    else:
        scale = "uint8 pixels / 255 (float arrays as stored)"
    return f"{scale} -> float32 N x C x H x W in [0, 1]; no mean/std normalization"


def train_val_split(ds: ArrayDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Carve a validation split out of training data (tuning never sees the test split)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = max(1, int(round(len(ds) * val_fraction)))
    return (ds.take(np.sort(order[n_val:]), ds.name + ":train"),
            ds.take(np.sort(order[:n_val]), ds.name + ":val"))


def calibration_sample(ds: ArrayDataset, n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced sample of ``n`` images as uint8 (what calibration/*.npz store)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(ds.y)
    per = [rng.permutation(np.flatnonzero(ds.y == c)) for c in classes]
    idx = np.concatenate([p[: n // len(classes) + (1 if i < n % len(classes) else 0)] for i, p in enumerate(per)])
    idx = np.sort(idx)
    return np.round(ds.x[idx] * 255).astype(np.uint8), ds.y[idx]
