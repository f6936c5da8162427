"""Accuracy and dense/pruned agreement, measured through the engines on real test data (numpy only)."""

from __future__ import annotations

from typing import Any

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


def agreement(ld: np.ndarray, lp: np.ndarray) -> dict[str, Any]:
    """How often two models pick the same class, and their largest output difference."""
    d, p = ld.reshape(len(ld), -1), lp.reshape(len(lp), -1)
    return {"top1": float(np.mean(d.argmax(axis=1) == p.argmax(axis=1))),
            "max_abs_logit_diff": float(np.max(np.abs(d.astype(np.float64) - p.astype(np.float64)))),
            "samples": int(len(d))}
