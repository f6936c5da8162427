"""The benchmark report's PNGs (matplotlib, Agg): accuracy and latency against sparsity, the
accuracy/latency Pareto front, and one cell's trend over runs. Each writes to a binary file object;
the caller decides where. Inputs are `htmlreport.CellRow`s and history result rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, BinaryIO

import matplotlib

matplotlib.use("Agg")  # headless: CI runners and boards have no display
import matplotlib.pyplot as plt  # noqa: E402

FLAG_COLORS = {"regression": "#c0392b", "suspect": "#e67e22", "board-drift": "#8e44ad",
               "improvement": "#27ae60", "new-segment": "#7f8c8d"}


def accuracy_vs_sparsity(rows: Sequence[Any], out: BinaryIO) -> None:
    """Top-1 of the pruned engine against sparsity: a panel per model, a line per method and granularity."""
    by_model = _group(rows, lambda r: r.model)
    fig, axes = _panels(len(by_model))
    for ax, (model, mrows) in zip(axes, by_model.items()):
        for (method, gran), lrows in _group(mrows, lambda r: (r.method, r.granularity)).items():
            pts = sorted((r.sparsity, r.accuracy) for r in lrows if r.accuracy is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{method} ({gran})")
        dense = [r.dense_accuracy for r in mrows if r.dense_accuracy is not None]
        if dense:
            ax.axhline(max(dense), color="#555", ls="--", lw=1, label="dense")
        _finish(ax, f"{model}: accuracy", "sparsity", "top-1 %")
    _save(fig, out)


def latency_vs_sparsity(rows: Sequence[Any], out: BinaryIO) -> None:
    """p50 of the pruned engine against sparsity: a panel per target, a line per model, method and granularity."""
    by_target = _group(rows, lambda r: r.target)
    fig, axes = _panels(len(by_target))
    for ax, (target, trows) in zip(axes, by_target.items()):
        for (model, method, gran), lrows in _group(trows, lambda r: (r.model, r.method, r.granularity)).items():
            ax.plot(*zip(*sorted((r.sparsity, r.p50) for r in lrows)), marker="o", label=f"{model} {method} ({gran})")
        for model, mrows in _group(trows, lambda r: r.model).items():
            dense = [r.dense_p50 for r in mrows if r.dense_p50 is not None]
            if dense:
                ax.axhline(float(sorted(dense)[len(dense) // 2]), ls="--", lw=1, color="#555", label=f"{model} dense")
        _finish(ax, f"{target}: latency", "sparsity", "p50 ms")
    _save(fig, out)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (lower latency, higher
    accuracy), ordered by latency."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(l2 <= lat and a2 >= acc and (l2, a2) != (lat, acc) for l2, a2 in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def pareto(rows: Sequence[Any], out: BinaryIO) -> None:
    """Accuracy against p50 latency of every cell and dense model, a panel per target (latencies of
    different boards do not compare), the front drawn through the cells that nothing beats."""
    by_target = _group(rows, lambda r: r.target)
    fig, axes = _panels(len(by_target))
    for ax, (target, trows) in zip(axes, by_target.items()):
        pts, labels = [], []
        for r in trows:
            if r.accuracy is not None:
                pts.append((r.p50, r.accuracy))
                labels.append(f"{r.model} {r.method} {r.sparsity:g}")
        for model, mrows in _group(trows, lambda r: r.model).items():
            dense = [(r.dense_p50, r.dense_accuracy) for r in mrows if None not in (r.dense_p50, r.dense_accuracy)]
            if dense:
                pts.append(sorted(dense)[len(dense) // 2])
                labels.append(f"{model} dense")
        if pts:
            ax.scatter(*zip(*pts), color="#9fb4d8", zorder=2, label="cell")
            front = pareto_front(pts)
            ax.plot(*zip(*(pts[i] for i in front)), color="#dd8452", marker="o", zorder=3, label="Pareto front")
            for i in front:
                ax.annotate(labels[i], pts[i], fontsize=7, xytext=(4, 4), textcoords="offset points")
        _finish(ax, f"{target}: accuracy vs latency", "p50 ms", "top-1 %")
    _save(fig, out)


def trend(cell_id: str, results: Sequence[dict], flagged: dict[tuple[int, int], list[str]], out: BinaryIO) -> None:
    """One cell over runs: p50 and p99 of the pruned engine per measurement (x: run id; a
    re-measurement sits just right of its run), a vertical line where the stack fingerprint changed
    (a new segment), measurements flagged otherwise ringed in their flag's colour. ``flagged`` maps
    (run_id, attempt) to the flag kinds of that measurement."""
    xs = [r["run_id"] + 0.2 * r["attempt"] for r in results]
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    ax.plot(xs, [r["p50_ms"] for r in results], marker="o", color="#4c72b0", label="p50")
    ax.plot(xs, [r["p99_ms"] for r in results], marker=".", ls=":", color="#4c72b0", alpha=0.7, label="p99")
    for prev, cur, x_prev, x in zip(results, results[1:], xs, xs[1:]):
        if cur["segment"] != prev["segment"]:
            ax.axvline((x_prev + x) / 2, color=FLAG_COLORS["new-segment"], ls="--", lw=1.2)
            ax.annotate("new stack", ((x_prev + x) / 2, 1), xycoords=("data", "axes fraction"), fontsize=7,
                        xytext=(3, -10), textcoords="offset points", color=FLAG_COLORS["new-segment"])
    seen = set()
    for r, x in zip(results, xs):
        # a new segment is drawn as its boundary line above, not as a ring
        for kind in [k for k in flagged.get((r["run_id"], r["attempt"]), []) if k != "new-segment"]:
            ax.scatter([x], [r["p50_ms"]], s=160, facecolors="none", edgecolors=FLAG_COLORS.get(kind, "k"),
                       linewidths=2, zorder=4, label=None if kind in seen else kind)
            seen.add(kind)
    values = [v for r in results for v in (r["p50_ms"], r["p99_ms"]) if v > 0]
    if values and max(values) > 10 * min(values):
        ax.set_yscale("log")   # one stray p99 would otherwise flatten the p50 line it is read against
    ax.set_xticks(sorted({r["run_id"] for r in results}))
    _finish(ax, cell_id, "run", "ms")
    _save(fig, out)


def _group(rows, key) -> dict:
    out: dict = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(sorted(out.items()))


def _panels(n: int):
    fig, axes = plt.subplots(1, max(n, 1), figsize=(5.2 * max(n, 1), 3.6), squeeze=False)
    return fig, list(axes[0])


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, out: BinaryIO) -> None:
    fig.tight_layout()
    try:
        fig.savefig(out, format="png", dpi=100)
    finally:
        plt.close(fig)
