"""Accuracy and dense/pruned agreement, measured through the engines on real test data (numpy only)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgeprune.measure.timing import static_batch, tile_rows


def predict(session: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """First output for every row of x, in batches of `batch` (the last one padded if needed)."""
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch and static_batch(session):
            chunk = tile_rows(chunk, batch)
        outs.append(np.asarray(session.run(np.ascontiguousarray(chunk)))[:n])
    return np.concatenate(outs)


def top1_accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    pred = logits.reshape(len(logits), -1).argmax(axis=1)
    return float(100.0 * np.mean(pred == y))


def score(logits: np.ndarray, y: np.ndarray, metric: Callable | None = None) -> float:
    """Top-1 in percent, or the task's own ``metric(outputs, targets)`` (--metric, torch tensors)."""
    if metric is None:
        return top1_accuracy(logits, y)
    import torch   # only where a metric was given: a board running this module has no torch

    from edgeprune.training import run_metric

    return run_metric(metric, torch.from_numpy(logits), torch.from_numpy(y))


def agreement(ld: np.ndarray, lp: np.ndarray) -> dict[str, Any]:
    """How often two models pick the same class, their largest output difference and the mean cosine
    of their outputs: what judges a model whose task has no labels here."""
    d, p = ld.reshape(len(ld), -1).astype(np.float64), lp.reshape(len(lp), -1).astype(np.float64)
    norms = np.linalg.norm(d, axis=1) * np.linalg.norm(p, axis=1)
    cos = np.sum(d * p, axis=1) / np.where(norms > 0, norms, 1.0)
    return {"top1": float(np.mean(d.argmax(axis=1) == p.argmax(axis=1))),
            "max_abs_logit_diff": float(np.max(np.abs(d - p))),
            "samples": int(len(d)),
            "cosine": float(np.mean(cos))}
