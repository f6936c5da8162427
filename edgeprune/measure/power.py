"""Power and energy on a Jetson, from tegrastats lines sampled across a timed window.

tegrastats prints one line per interval; its power rails read `NAME cur/avg` in mW (JetPack 4),
`NAME 2390mW/2390mW` (JetPack 5/6) or `NAME 5139mW/5139mW/5139mW` (JetPack 7); the first value is
the instantaneous one. Which rails make the module's total depends on the generation:
- Nano: `POM_5V_IN` alone (the other POM_5V_* rails are inside it);
- TX2, Xavier NX, Orin NX, Orin Nano: `VDD_IN` (the module's input);
- AGX Xavier and AGX Orin have no input rail: the total is the sum of the rails, as jtop computes it.

Energy per inference is the trapezoid integral of the total power over the timed window divided by
the inferences in it (MLPerf power's formula); the part above idle is (P̄_run − P̄_idle)·T/N.

`measure_power` samples tegrastats across an idle window and one timed window per model: the
interleaved latency loop runs dense and pruned in turns, so its power belongs to neither. Each window
lasts the target's `min_seconds` (1 s at least) at the first benchmarked batch size. Lines are stamped
with this process's monotonic clock as they arrive, and a window is integrated only once samples on
both sides of it are in. Where the board has no tegrastats, no power is measured. This module runs on
the board too: standard library (and numpy through the timing helpers) only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgeprune.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from edgeprune.backends.base import Backend, Engine
    from edgeprune.targets import Target

# NAME value[mW][/value[mW]...] where NAME is an upper-case rail name (digits and _ allowed).
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*[A-Z0-9])\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?\b")
# Fields that look like rails but are not: RAM 4722/7844MB, SWAP 149/1024MB, IRAM 0/252kB.
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}
INPUT_RAILS = ("POM_5V_IN", "VDD_IN")   # a module's total input, where the board has one


def parse_rails(line: str) -> dict[str, float]:
    """The power rails of one tegrastats line, in mW (instantaneous values)."""
    rails = {}
    for m in _RAIL.finditer(line):
        name = m.group(1)
        after = line[m.end():m.end() + 2]
        if name in _NOT_RAILS or after.startswith(("MB", "kB", "KB", "GB")):
            continue
        rails[name] = float(m.group(2))
    return rails


def total_rails(rails: dict[str, float]) -> list[str]:
    """Which rails sum to the module's total power on this board (see the module docstring)."""
    for name in INPUT_RAILS:
        if name in rails:
            return [name]
    return sorted(rails)


def total_mw(line: str) -> tuple[float, list[str]] | None:
    """(total power in mW, the rails summed) of a tegrastats line, or None if it has no rails."""
    rails = parse_rails(line)
    if not rails:
        return None
    names = total_rails(rails)
    return sum(rails[n] for n in names), names


@dataclass
class Power:
    """Mean power and energy per inference over a timed window; `rails` are the ones summed."""

    mean_w: float
    energy_mj_per_inference: float
    idle_w: float | None
    energy_above_idle_mj_per_inference: float | None
    window_s: float
    samples: int
    rails: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def integrate_mj(samples: list[tuple[float, float]], t0: float, t1: float) -> float:
    """∫ P dt over [t0, t1] in mJ, from (time s, power mW) samples, trapezoids between samples and
    linear interpolation at the window's edges (a sample rarely falls exactly on them)."""
    if t1 <= t0:
        raise ValueError("empty window")
    pts = sorted(samples)
    if len(pts) < 2 or pts[0][0] > t0 or pts[-1][0] < t1:
        raise ValueError("the samples do not cover the window")
    inside = [(t0, _at(pts, t0))] + [(t, p) for t, p in pts if t0 < t < t1] + [(t1, _at(pts, t1))]
    mw_s = sum(0.5 * (pa + pb) * (tb - ta) for (ta, pa), (tb, pb) in zip(inside, inside[1:]))
    return mw_s   # mW·s = mJ


def _at(pts: list[tuple[float, float]], t: float) -> float:
    for (ta, pa), (tb, pb) in zip(pts, pts[1:]):
        if ta <= t <= tb:
            return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)
    raise ValueError("time outside the samples")


def energy(lines: list[tuple[float, str]], t0: float, t1: float, inferences: int,
           idle_lines: list[tuple[float, str]] | None = None) -> Power:
    """Power over the timed window [t0, t1] (seconds, the sampler's clock) from timestamped
    tegrastats lines; ``idle_lines`` are lines sampled with nothing running, for the idle baseline."""
    if inferences <= 0:
        raise ValueError("no inferences in the window")
    samples, rails = _samples(lines)
    mj = integrate_mj(samples, t0, t1)
    window = t1 - t0
    mean_w = mj / window / 1000.0
    idle_w = above = None
    if idle_lines:
        idle, _ = _samples(idle_lines)
        idle_w = sum(p for _, p in idle) / len(idle) / 1000.0
        above = (mean_w - idle_w) * window * 1000.0 / inferences
    n_inside = sum(1 for t, _ in samples if t0 <= t <= t1)
    return Power(mean_w, mj / inferences, idle_w, above, window, n_inside, rails)


def _samples(lines: list[tuple[float, str]]) -> tuple[list[tuple[float, float]], list[str]]:
    samples, rails = [], []
    for t, line in lines:
        got = total_mw(line)
        if got is not None:
            samples.append((t, got[0]))
            rails = got[1]
    if not samples:
        raise ValueError("no power rails in the tegrastats lines")
    return samples, rails


# ---------------------------------------------------------------- sampling on the board
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
    from edgeprune.measure.timing import tile_rows

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
