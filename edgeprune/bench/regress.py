"""The nightly regression verdict: a flag only for a change that is both significant and large.

Each cell measured in a run is compared with its own history in its current *segment* (the results
measured on the same stack fingerprint); a prior run counts by its last attempt.

- **Latency p50 and p99**, with fewer than `min_history` earlier runs in the segment: significant
  against the previous run (SciPy's Mann–Whitney U on the per-round medians, one-sided, p < `alpha`)
  *and* large (p50 ≥ +5 %, p99 ≥ +10 %) against the median of the segment's earlier runs (with one
  earlier run, that run: the issue's rule; with more, one unusually fast night is not the baseline
  the next is measured against). There are no per-round p99s: p99's significance is that of the
  per-round medians' shift, and its size is its own.
- **The dense model as the machine's control.** Every cell times the dense model in the same
  interleaved loop as the pruned one. Where the dense engine is byte for byte the one the compared
  runs timed (same ONNX digest), a move of the machine (load, clocks, thermals) shows on both, so
  latency is judged relative to it: the per-round medians become pruned ÷ dense of the same round,
  and "before" is the earlier pruned/dense ratio at tonight's dense speed. A slower pruned model
  still shows in full; a busier machine does not. Where the dense model changed (another model
  under the cell's name, another export), the raw figures are compared.
- **Energy per inference and peak memory** have a single value per run, so nothing to test for
  significance within a run: below `min_history` runs they are judged by "large" alone, against the
  previous run and against the median of the earlier runs (energy ≥ +5 %; memory ≥ +5 % *and*
  ≥ +16 MB, so that a few MB of allocator noise on a small process never counts), from
  `min_history` runs on by the history rule below.
- **Against history**, once the segment holds ≥ `min_history` earlier runs, for all four: robust
  z = (x − median of the last `window` runs) / (1.4826 × MAD) > `z`, and large against that median:
  the spread between runs (the machine from night to night) decides, not the spread within one.
  For latency the rounds must also be significant against the window's pooled per-round medians
  (Mann–Whitney as above), as airspeed velocity asks a step, a test and a factor: a p99 over a steady
  history has a tiny MAD, and one preemption more would otherwise be a 15-sigma step.
- **Accuracy** (top-1 % on the fixed evaluation set) against the previous run: a drop ≥ `accuracy_pt`
  with exact McNemar p < `mcnemar_alpha` (a two-sided binomial test on the discordant samples of the
  two runs' packed per-sample correctness, only when their evaluation-set digests match), or below
  an absolute floor from the config. Accuracy on a fixed set is deterministic, so an accuracy flag is
  a regression at once, without a second measurement.
- **Segments.** A changed stack fingerprint (board, L4T, TensorRT, CUDA, ONNX Runtime, power mode,
  clocks) starts a new baseline: no alarm across the boundary, a "new-segment" flag for the report.
- **Suspects.** A latency, energy or memory flag on a cell's only attempt in the run makes it a
  suspect; the runner measures it once more (attempt 1) and calls `assess` again: flagged on both
  attempts = a regression, clean on the second = none.
- **Board drift.** When every comparable cell of one board (at least two) moves alike (same metric,
  same direction), that is the board (clocks, thermals, its software), not the code: those flags become
  "board-drift" and `Verdict.drift` names the metrics.

An improvement (the same rules, the other way) is flagged "improvement" and never fails a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.table import Table
from scipy.stats import binomtest, mannwhitneyu

from edgeprune.bench.history import History

LATENCY = ("p50", "p99")
METRICS = (*LATENCY, "energy", "memory")
_COLUMN = {"p50": "p50_ms", "p99": "p99_ms", "energy": "energy_mj", "memory": "peak_rss_mb"}
_UNIT = {"p50": "ms", "p99": "ms", "energy": "mJ", "memory": "MB", "accuracy": "%"}
# MAD x 1.4826 estimates the standard deviation of normal data.
_MAD_SCALE = 1.4826


@dataclass
class Thresholds:
    p50: float = 0.05            # relative rise that matters
    p99: float = 0.10
    energy: float = 0.05
    memory: float = 0.05
    memory_mb: float = 16.0      # and at least this many MB
    alpha: float = 0.002         # Mann-Whitney U, one-sided
    z: float = 4.0               # robust z against the history
    min_history: int = 8         # earlier runs in the segment before the history rule takes over
    window: int = 20             # the history rule's lookback
    accuracy_pt: float = 0.3     # a drop in top-1 points that matters
    mcnemar_alpha: float = 0.01


@dataclass
class Verdict:
    flags: list[dict]                 # {"cell","metric","kind","before","after","change","p_value","rule"}
    suspects: list[str]               # cells flagged on their only attempt: measure once more, assess again
    regressions: list[dict]
    drift: dict[str, list[str]]       # board target -> metrics drifting on every cell of that board
    exit_code: int                    # 1 when a regression stands
    run_id: int | None = None
    cells: int = 0                    # cells the run measured

    def table(self) -> Table:
        """The console summary: one row per flag, regressions first."""
        order = {"regression": 0, "suspect": 1, "board-drift": 2, "improvement": 3, "new-segment": 4}
        verdict = (f"{len(self.regressions)} regression(s)" if self.regressions else "no regression")
        table = Table(title=f"Run {self.run_id}: {self.cells} cells, {verdict}", title_justify="left")
        for name in ("cell", "metric", "verdict", "before", "after", "change", "evidence"):
            table.add_column(name, justify="right" if name in ("before", "after", "change") else "left")
        style = {"regression": "bold red", "suspect": "yellow", "board-drift": "magenta", "improvement": "green"}
        for f in sorted(self.flags, key=lambda f: (order[f["kind"]], f["cell"], f["metric"])):
            table.add_row(f["cell"], f["metric"], f["kind"], _fmt(f["metric"], f["before"]),
                          _fmt(f["metric"], f["after"]), _fmt_change(f), f["rule"], style=style.get(f["kind"]))
        if not self.flags:
            table.add_row("(every cell)", "", "no change flagged", "", "", "", "")
        return table


def _fmt(metric: str, v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g} {_UNIT.get(metric, '')}".strip()
    return "" if v is None else str(v)


def _fmt_change(f: dict) -> str:
    c = f.get("change")
    if c is None:
        return ""
    return f"{c:+.2f} pt" if f["metric"] == "accuracy" else f"{100 * c:+.1f} %"


def _large(metric: str, before: float, after: float, direction: int, t: Thresholds) -> bool:
    """Whether a move of ``direction`` (+1 up, -1 down) from ``before`` to ``after`` is big enough."""
    move = direction * (after - before)
    if metric == "memory":
        return move >= max(t.memory * before, t.memory_mb)
    return move >= getattr(t, metric) * before


def _robust_z(x: float, values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    if mad == 0.0:
        # Identical history (a memory figure often is): any move is infinitely unusual; "large" decides.
        return med, 0.0 if x == med else math.copysign(math.inf, x - med)
    return med, (x - med) / (_MAD_SCALE * mad)


def _shift(cur: list[float], base: list[float], t: Thresholds) -> tuple[int, float | None]:
    """Direction (+1, -1, 0) and one-sided Mann-Whitney p-value of the per-round medians' shift."""
    if len(cur) < 2 or len(base) < 2:
        return 0, None
    up = float(mannwhitneyu(cur, base, alternative="greater").pvalue)
    down = float(mannwhitneyu(cur, base, alternative="less").pvalue)
    if up < t.alpha:
        return 1, up
    if down < t.alpha:
        return -1, down
    return 0, min(up, down)


def _dense_side(row: dict) -> tuple[str | None, dict, list[float]]:
    """The dense engine's digest, its latency figures and its per-round medians at the report's batch."""
    rep = row.get("report") or {}
    lat = (rep.get("latency") or {}).get(str(rep.get("latency_batch", 1))) or {}
    return ((rep.get("dense") or {}).get("sha256"), lat.get("dense") or {},
            list((lat.get("rounds_ms") or {}).get("dense") or []))


def _controlled(metric: str, prior: list[dict], cur: dict) -> tuple[list[dict], dict] | None:
    """``prior`` and ``cur`` with latency relative to the dense control timed in the same loop, when every
    one of them timed the same dense engine (see the module docstring); None where that does not hold."""
    digest, dense, rounds = _dense_side(cur)
    if not digest or not dense.get(metric) or len(rounds) != len(cur["rounds_ms"]):
        return None
    col = _COLUMN[metric]
    out = []
    for r in (*prior, cur):
        d, lat, dr = _dense_side(r)
        if d != digest or not lat.get(metric) or len(dr) != len(r["rounds_ms"]) or not all(dr):
            return None
        # in milliseconds at tonight's dense speed: the ratio to the row's own dense, times cur's dense
        scale = dense[metric] / lat[metric]
        out.append({**r, col: r[col] * scale,
                    "rounds_ms": [v / q * dense["p50"] for v, q in zip(r["rounds_ms"], dr)]})
    return out[:-1], out[-1]


def _compare(metric: str, prior: list[dict], cur: dict, t: Thresholds) -> dict | None:
    """A flag candidate {"metric","direction","before","after","change","p_value","rule"}, or None."""
    col = _COLUMN[metric]
    prior = [r for r in prior if r[col] is not None]
    if cur[col] is None or not prior:
        return None
    control = _controlled(metric, prior, cur) if metric in LATENCY else None
    if control is not None:
        prior, cur = control
    x = cur[col]
    p = None
    if len(prior) >= t.min_history:
        recent = prior[-t.window:]
        before, z = _robust_z(x, np.asarray([r[col] for r in recent], dtype=float))
        direction = 1 if z > t.z else -1 if z < -t.z else 0
        rule = f"robust z {z:+.1f} against the median of the last {len(recent)} runs"
        if metric in LATENCY and direction:
            # A step in the history is not enough alone (a p99 over a steady history has a tiny MAD):
            # the rounds must also sit significantly above, or below, the window's.
            shift, p = _shift(cur["rounds_ms"], [v for r in recent for v in r["rounds_ms"]], t)
            direction = direction if shift == direction else 0
            rule += ", Mann-Whitney U against their per-round medians"
    else:
        # The step is taken against the previous run; its size against the median of the segment's
        # runs so far, so that one lucky fast night does not make the next, ordinary one a regression.
        prev = prior[-1]
        before = float(np.median([r[col] for r in prior]))
        if metric in LATENCY:
            direction, p = _shift(cur["rounds_ms"], prev["rounds_ms"], t)
            rule = (f"Mann-Whitney U on {len(cur['rounds_ms'])} vs {len(prev['rounds_ms'])} per-round medians "
                    f"against the previous run, size against the median of {len(prior)} run(s)")
        else:
            direction = int(np.sign(x - prev[col]))
            if direction and not _large(metric, prev[col], x, direction, t):
                direction = 0
            rule = f"one value per run: size against the previous run and the median of {len(prior)} run(s)"
    if direction == 0 or not _large(metric, before, x, direction, t):
        return None
    if control is not None:
        rule += "; relative to the unchanged dense model timed in the same loop"
    return {"metric": metric, "direction": direction, "before": float(before), "after": float(x),
            "change": (x - before) / before if before else math.inf, "p_value": p, "rule": rule}


def _mcnemar(a: bytes, b: bytes) -> float | None:
    """Exact McNemar p-value between two packed per-sample correctness vectors (None if they differ in size).

    The zero bits packbits pads with are 'wrong' in both: concordant, so they do not count."""
    ua, ub = np.unpackbits(np.frombuffer(a, np.uint8)), np.unpackbits(np.frombuffer(b, np.uint8))
    if len(ua) != len(ub):
        return None
    lost = int(np.sum(ua & ~ub & 1))
    gained = int(np.sum(ub & ~ua & 1))
    if lost + gained == 0:
        return 1.0
    return float(binomtest(lost, lost + gained, 0.5).pvalue)


def _accuracy(prior: list[dict], cur: dict, floor: float | None, t: Thresholds) -> dict | None:
    acc = cur["accuracy"]
    if acc is None:
        return None
    if floor is not None and acc < floor:
        return {"metric": "accuracy", "direction": 1, "kind": "regression", "before": float(floor), "after": acc,
                "change": acc - floor, "p_value": None, "rule": f"below the configured floor of {floor:g} %"}
    prev = next((r for r in reversed(prior) if r["accuracy"] is not None), None)
    if prev is None:
        return None
    change = acc - prev["accuracy"]
    if abs(change) < t.accuracy_pt:
        return None
    if not (cur["correct"] and prev["correct"] and cur["eval_digest"] and cur["eval_digest"] == prev["eval_digest"]):
        return None  # no paired test possible: another evaluation set, or no per-sample record
    p = _mcnemar(prev["correct"], cur["correct"])
    if p is None or p >= t.mcnemar_alpha:
        return None
    return {"metric": "accuracy", "direction": 1 if change < 0 else -1,
            "kind": "regression" if change < 0 else "improvement", "before": prev["accuracy"], "after": acc,
            "change": change, "p_value": p, "rule": "exact McNemar test on the per-sample correctness"}


def _stack_change(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old["stack"]) | set(new["stack"]) if old["stack"].get(k) != new["stack"].get(k))
    what = ", ".join(f"{k} {old['stack'].get(k, '-')} -> {new['stack'].get(k, '-')}" for k in keys[:4])
    return "stack changed: a new baseline starts" + (f" ({what})" if what else "")


def _last_attempts(rows: list[dict]) -> list[dict]:
    """One row per run: its last attempt (a suspect's re-measurement supersedes the first)."""
    by_run: dict[int, dict] = {}
    for r in rows:
        by_run[r["run_id"]] = r
    return [by_run[k] for k in sorted(by_run)]


def assess(history: History, run_id: int, thresholds: Thresholds = Thresholds(),
           floors: dict[str, float] | None = None) -> Verdict:
    """The verdict on one run: every cell it measured, against that cell's history before it."""
    t = thresholds
    floors = floors or {}
    flags: list[dict] = []
    pending: set[str] = set()
    # target -> metric -> cells that had a baseline for it: the denominator of "every cell of a board"
    comparable: dict[str, dict[str, set[str]]] = {}
    run_cells = sorted({r["cell_id"] for r in history.results(run_id=run_id)})
    for cid in run_cells:
        rows = history.results(cell_id=cid)
        attempts = [r for r in rows if r["run_id"] == run_id]
        first, last = attempts[0], attempts[-1]
        earlier = [r for r in rows if r["run_id"] < run_id]
        prior = _last_attempts([r for r in earlier if r["segment"] == first["segment"]])
        if earlier and not prior:
            flags.append({"cell": cid, "metric": "stack", "kind": "new-segment",
                          "before": earlier[-1]["stack_fingerprint"], "after": first["stack_fingerprint"],
                          "change": None, "p_value": None, "rule": _stack_change(earlier[-1], first)})
        floor = floors.get(cid, floors.get(first["cell"]["model"]))
        acc = _accuracy(prior, last, floor, t)
        if acc is not None:
            flags.append({"cell": cid, **acc})
        target = first["cell"]["target"]
        for metric in METRICS:
            if prior and first[_COLUMN[metric]] is not None and any(r[_COLUMN[metric]] is not None for r in prior):
                comparable.setdefault(target, {}).setdefault(metric, set()).add(cid)
            c0 = _compare(metric, prior, first, t)
            if len(attempts) == 1:
                if c0 is not None:
                    flags.append({"cell": cid, "kind": "suspect" if c0["direction"] > 0 else "improvement", **c0})
                continue
            c1 = _compare(metric, prior, last, t)
            if c0 is not None and c1 is not None and c0["direction"] == c1["direction"]:
                p = None if c0["p_value"] is None else max(c0["p_value"], c1["p_value"])
                flags.append({"cell": cid, "kind": "regression" if c1["direction"] > 0 else "improvement",
                              **c1, "p_value": p, "rule": c1["rule"] + "; on both attempts"})
            elif c0 is not None and c0["direction"] > 0:
                flags.append({"cell": cid, "kind": "suspect", **c0, "cleared": True,
                              "rule": c0["rule"] + "; within the rules when measured again"})
        if len(attempts) == 1:
            pending.add(cid)

    drift = _board_drift(flags, comparable)
    for f in flags:
        f.pop("direction", None)
        f.pop("cleared", None)
    suspects = sorted({f["cell"] for f in flags if f["kind"] == "suspect" and f["cell"] in pending})
    regressions = [f for f in flags if f["kind"] == "regression"]
    return Verdict(flags=flags, suspects=suspects, regressions=regressions, drift=drift,
                   exit_code=1 if regressions else 0, run_id=run_id, cells=len(run_cells))


def _board_drift(flags: list[dict], comparable: dict[str, dict[str, set[str]]]) -> dict[str, list[str]]:
    """Turn flags that hit every comparable cell of one board alike into that board's drift."""
    drift: dict[str, list[str]] = {}
    # A suspect cleared on its second attempt did not move.
    moving = [f for f in flags if f["metric"] in METRICS and not f.get("cleared")
              and f["kind"] in ("regression", "suspect", "improvement")]
    for target, metrics in comparable.items():
        for metric, cells in metrics.items():
            if len(cells) < 2:
                continue
            for direction in (1, -1):
                hit = [f for f in moving if f["metric"] == metric and f["direction"] == direction and f["cell"] in cells]
                if {f["cell"] for f in hit} == cells and metric not in drift.get(target, []):
                    for f in hit:
                        f["kind"] = "board-drift"
                    drift.setdefault(target, []).append(metric)
                    if metric == "p50":
                        # p99's significance is the rounds' shift: once that shift is the board's, a
                        # p99 rise alike on the same cells is the board's too.
                        tails = [f for f in moving if f["metric"] == "p99" and f["direction"] == direction
                                 and f["cell"] in cells and f["kind"] != "board-drift"]
                        for f in tails:
                            f["kind"] = "board-drift"
                        if tails and "p99" not in drift[target]:
                            drift[target].append("p99")
    return drift
