"""An image folder in the layout people already have: ``ROOT/train/CLASS/*.png|jpg`` and ``ROOT/val/``
and/or ``ROOT/test/`` with the same class folders. Images are decoded one by one in DataLoader workers;
only the list of paths is held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .preprocess import Preprocess, parse_normalize
from .stream import StreamDataset

SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "val", "test")


def is_image_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "train").is_dir()


class ImageFiles(torch.utils.data.Dataset):
    """(path, label) pairs decoded and preprocessed on access."""

    def __init__(self, files: list[str], labels: np.ndarray, preprocess: Preprocess):
        self.files, self.labels, self.preprocess = files, labels, preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as img:
                x = self.preprocess(img)
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"cannot read image {self.files[i]}: {e}") from None
        return x, int(self.labels[i])


def _classes(root: Path) -> list[str]:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{root / 'train'} has no class folders (expected train/CLASS/image.png)")
    return classes


def _files(root: Path, split: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    folder = root / split
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name not in index:
            raise InputError(f"{folder} has a class folder '{d.name}' that train/ does not have")
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in SUFFIXES:
                files.append(str(f))
                labels.append(index[d.name])
    if not files:
        raise InputError(f"{folder} holds no .png or .jpg images in class folders")
    return files, np.asarray(labels, np.int64)


def default_preprocess(root: str | Path, input_shape: tuple[int, ...] | None = None,
                       normalize: str | None = None) -> Preprocess:
    """``input_shape`` (C,H,W), else the first training image's own size and channels (greyscale
    stays 1 channel, anything else is read as RGB); ``normalize`` as --normalize takes it."""
    from PIL import Image

    root = Path(root)
    if input_shape is None:
        files, _ = _files(root, "train", _classes(root))
        with Image.open(files[0]) as img:
            input_shape = (1 if img.mode in ("L", "1", "I;16") else 3, img.size[1], img.size[0])
    if len(input_shape) != 3:
        raise InputError(f"--input-shape for an image folder is C,H,W, got {','.join(map(str, input_shape))}")
    norm = parse_normalize(normalize, int(input_shape[0]))
    return Preprocess(tuple(int(v) for v in input_shape), *(norm or (None, None)))  # type: ignore[arg-type]


def open_split(root: str | Path, split: str, preprocess: Preprocess) -> StreamDataset | None:
    """The ``split`` of the folder: train; val (None when there is no val/ folder: the caller carves
    one from train); test (test/, else val/ when there is no test/; neither is an InputError)."""
    root = Path(root)
    if not is_image_folder(root):
        raise InputError(f"{root} is not an image folder: expected {root}/train/CLASS/*.png|jpg")
    classes = _classes(root)
    if split == "val" and not ((root / "val").is_dir() and (root / "test").is_dir()):
        return None     # without both, val/ (if any) is the test split: tuning must not see it
    if split == "test" and not (root / "test").is_dir():
        if not (root / "val").is_dir():
            raise InputError(f"{root} has no test split (no test/ or val/ folder beside train/)")
        split = "val"   # the held-out folder serves as the test split; validation is carved from train
    files, labels = _files(root, split, classes)
    return StreamDataset(ImageFiles(files, labels, preprocess), f"{root.name}/{split}", preprocess.input_shape,
                         len(classes), labels=labels)
