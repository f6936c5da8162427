"""Power on the board: tegrastats sampled across an idle window and one timed window per model.

The interleaved latency loop runs dense and pruned in turns, so its power belongs to neither: energy
per inference needs a window in which one engine runs alone. Each window lasts the target's
`min_seconds` (1 s at least) at the first benchmarked batch size; an idle window (nothing running)
comes first, for the part above idle. Lines are stamped with this process's monotonic clock as
they arrive, and a window is integrated only once samples on both sides of it are in
(`edgeprune.measure.power.energy`). Where the board has no tegrastats, no power is measured.
Standard library and numpy only (the board's side).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from edgeprune.errors import InputError
from edgeprune.measure.power import energy, total_mw
from edgeprune.measure.timing import tile_rows

if TYPE_CHECKING:
    import numpy as np

    from edgeprune.backends.base import Backend, Engine
    from edgeprune.targets import Target

TEGRASTATS = "tegrastats"
INTERVAL_MS = 100
WAIT_S = 5.0     # for a sample after a window's end: tegrastats prints every INTERVAL_MS


class Tegrastats:
    """`tegrastats --interval MS` in the background; `lines` = [(monotonic time, line)]."""

    def __init__(self, interval_ms: int = INTERVAL_MS):
        cmd = [TEGRASTATS, "--interval", str(interval_ms)]
        if shutil.which("stdbuf"):
            cmd = ["stdbuf", "-oL", *cmd]     # a line as it is printed, not a pipe's buffer later
        self.lines: list[tuple[float, str]] = []
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_past(self, t: float) -> None:
        """Until a line stamped after ``t`` is in (a window's end needs a sample beyond it)."""
        deadline = time.monotonic() + WAIT_S
        while not (self.lines and self.lines[-1][0] > t):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise InputError("tegrastats stopped printing: no power samples to integrate")
            time.sleep(0.01)

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reader.join(timeout=5)

    def __enter__(self) -> Tegrastats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def available() -> bool:
    return shutil.which(TEGRASTATS) is not None


def measure_power(backend: Backend, engines: dict[str, Engine], target: Target, x: np.ndarray,
                  power_mode: str | None) -> dict[str, Any] | None:
    """The report's `power`: each model's mean power and energy per inference over a window of its own
    (the pruned model's at the top level, the deployed one), idle power, the rails summed; None without
    tegrastats."""
    if not available():
        return None
    seconds = max(float(target.run.min_seconds), 1.0)
    sessions = {label: backend.open(engines[label], target) for label in ("dense", "pruned")}
    static = sessions["dense"].input_shape[0]
    batch = static if isinstance(static, int) else target.run.batch_sizes[0]
    xb = tile_rows(x, batch)
    windows: dict[str, tuple[float, float, int]] = {}
    with Tegrastats() as ts:
        ts.wait_past(time.monotonic())
        t0 = time.monotonic()
        time.sleep(seconds)
        windows["idle"] = (t0, time.monotonic(), 0)
        for label, session in sessions.items():
            for _ in range(max(1, target.run.warmup)):
                session.run(xb)
            t0, n = time.monotonic(), 0
            while time.monotonic() - t0 < seconds:
                session.run(xb)
                n += 1
            windows[label] = (t0, time.monotonic(), n * batch)
        ts.wait_past(windows["pruned"][1])
        lines = list(ts.lines)
    i0, i1, _ = windows["idle"]
    idle = [(t, line) for t, line in lines if i0 <= t <= i1]
    models = {}
    for label in ("dense", "pruned"):
        t0, t1, inferences = windows[label]
        p = energy(lines, t0, t1, inferences, idle).to_dict()
        # the samples integrated and the window, so the figure can be checked by hand
        p.update(window=[t0, t1], inferences=inferences,
                 trace=[[t, total_mw(line)[0]] for t, line in lines if total_mw(line) and t0 - 1 <= t <= t1 + 1])
        models[label] = p
    top = models["pruned"]
    return {"mean_w": top["mean_w"], "energy_mj_per_inference": top["energy_mj_per_inference"],
            "idle_w": top["idle_w"], "rails": top["rails"], "power_mode": power_mode, "batch": batch,
            "source": "tegrastats", "models": models}
