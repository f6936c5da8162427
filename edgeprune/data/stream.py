"""Data read as it is used: a torch ``Dataset`` behind DataLoader workers, for sets that do not fit in
memory (image folders, a user's ``--data pkg.mod:fn``). The built-in sets stay ``ArrayDataset``s,
whose training loop indexes tensors directly (no worker processes, no collation on a 2-core machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import ArrayDataset


# batches each worker keeps ready: enough to hide a slow JPEG decode behind a GPU step, small enough
# that 4 workers x 4 batches of 3 x 224 x 224 images stay under 200 MB
PREFETCH = 4


def default_workers() -> int:
    """DataLoader worker processes: EDGEPRUNE_WORKERS, else one core left to the training process (up to 4)."""
    env = os.environ.get("EDGEPRUNE_WORKERS")
    if env is not None and env.strip().isdigit():
        return int(env)
    return max(1, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class StreamDataset:
    """A torch ``Dataset`` of ``(input, target)`` items with what edgeprune needs to know about it.

    ``labels``: integer class labels known without reading the inputs (an image folder's), or None;
    class-balanced sampling needs them. ``metric``: the task's own (``--metric``), or None for top-1."""

    dataset: Dataset
    name: str
    input_shape: tuple[int, ...]
    num_classes: int | None
    labels: np.ndarray | None = None
    metric: Callable | None = field(default=None, repr=False)
    workers: int = field(default_factory=default_workers)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, sampler: Sampler | None = None,
               pin_memory: bool = False) -> DataLoader:
        """Batches read by ``workers`` processes, each PREFETCH batches ahead of the training step;
        ``sampler`` (a DistributedSampler under torchrun) replaces the seeded shuffle; ``pin_memory``
        (on CUDA) page-locks them for asynchronous copies to the GPU."""
        gen = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          generator=gen, num_workers=self.workers, persistent_workers=self.workers > 0,
                          prefetch_factor=PREFETCH if self.workers > 0 else None, pin_memory=pin_memory)

    def take(self, idx: np.ndarray, name: str | None = None) -> "StreamDataset":
        idx = np.asarray(idx)
        return replace(self, dataset=Subset(self.dataset, idx.tolist()), name=name or self.name,
                       labels=None if self.labels is None else self.labels[idx])

    def head(self, n: int | None) -> "StreamDataset":
        """A seeded random subset of ``n`` items (all if n is None or >= len), as ArrayDataset.head."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(0).permutation(len(self))[:n])
        return self.take(idx, f"{self.name}[:{n}]")

    def arrays(self, batch_size: int = 256) -> ArrayDataset:
        """Every item read into memory: callers bound it first (``head``) — accuracy on ONNX Runtime,
        parity checks and calibration need numpy arrays."""
        xs, ys = [], []
        for x, y in self.loader(batch_size):
            xs.append(x.numpy().astype(np.float32, copy=False))
            ys.append(np.asarray(y))
        x = np.concatenate(xs) if xs else np.zeros((0, *self.input_shape), np.float32)
        y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
        return ArrayDataset(x, y, self.name, metric=self.metric)


Data = ArrayDataset | StreamDataset


def as_arrays(ds: Data, n: int | None = None) -> ArrayDataset:
    """``ds`` in memory: an ArrayDataset as it is (its seeded subset of ``n``), a stream's seeded subset read."""
    if isinstance(ds, ArrayDataset):
        return ds.head(n)
    return ds.head(n).arrays()
