"""The interleaved A/A'/B timing loop every backend is measured with.

Each round runs every session once, in an order rotated every round (A A' B, then A' B A, ...), so
the machine's noise, clock ramps and thermal drift fall on all of them alike. A session that can
time itself on its device (TensorRT: CUDA events around `execute`) says so with `device_time_ns`;
any other is timed by the wall clock around `run`. Needs numpy only: it runs on a board too.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def time_interleaved(
    sessions: Sequence[Any],
    xb: np.ndarray,
    warmup: int,
    iterations: int,
    min_seconds: float = 0.0,
    tick: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Per-run times (ns) of each session on the batch ``xb``, timed in rotating order within one
    loop: ``warmup`` untimed rounds, then at least ``iterations`` rounds and ``min_seconds``."""
    n = len(sessions)
    orders = [tuple((r + i) % n for i in range(n)) for r in range(n)]
    for r in range(warmup):
        for i in orders[r % n]:
            sessions[i].run(xb)
    timers = [_timer(s) for s in sessions]
    times: list[list[int]] = [[] for _ in sessions]
    # A collection pause inside a timed run would land on whichever model happened to be running.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter() + min_seconds
        r = 0
        while r < iterations or time.perf_counter() < deadline:
            for i in orders[r % n]:
                times[i].append(timers[i](xb))
            r += 1
            if tick is not None and r % 10 == 0 and r <= iterations:
                tick(10)
        if tick is not None and iterations % 10:
            tick(iterations % 10)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [np.asarray(t, dtype=np.int64) for t in times]


def _timer(session: Any) -> Callable[[np.ndarray], int]:
    device = getattr(session, "device_time_ns", None)
    if device is not None:
        return device
    clock = time.perf_counter_ns

    def wall(xb: np.ndarray) -> int:
        t0 = clock()
        session.run(xb)
        return clock() - t0

    return wall


def tile_rows(x: np.ndarray, n: int) -> np.ndarray:
    """n rows of real data for a session's batch: the first n, tiled when x has fewer."""
    if len(x) >= n:
        return np.ascontiguousarray(x[:n])
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def static_batch(session: Any) -> int | None:
    """The session's fixed batch size, None when its batch dimension is dynamic."""
    shape = getattr(session, "input_shape", None)
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return int(shape[0])
    return None


ROUNDS = 20


def round_medians(samples_ns: np.ndarray, rounds: int = ROUNDS) -> list[float]:
    """The timed series cut into ``rounds`` consecutive stretches, the median of each in ms: samples
    that are close to independent (a single run's times are autocorrelated by clocks and cache state),
    which is what a rank test between two runs needs (`edgeprune.bench.regress`)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return [float(np.median(part)) for part in np.array_split(ms, min(rounds, len(ms))) if len(part)]
