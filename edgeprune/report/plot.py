"""Latency plot: p50/p90/p99 per batch size for dense (A), the A/A control (A') and pruned (B)."""

from __future__ import annotations

from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")  # headless: build hosts and devices have no display
import matplotlib.pyplot as plt  # noqa: E402

from edgeprune.report.render import title  # noqa: E402
from edgeprune.report.schema import Report  # noqa: E402

_SERIES = (("dense", "dense (A)", "#4c72b0"), ("control", "dense again (A')", "#9fb4d8"), ("pruned", "pruned (B)", "#dd8452"))
_STATS = ("p50", "p90", "p99")


def latency_png(report: Report, out: BinaryIO) -> None:
    """Write the PNG to a binary file object (the caller decides where, and writes atomically)."""
    batches = sorted(report.latency)
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches) + 0.6, 3.6), squeeze=False)
    width = 0.26
    for ax, b in zip(axes[0], batches):
        bl = report.latency[b]
        for i, (attr, label, color) in enumerate(_SERIES):
            stats = getattr(bl, attr)
            xs = [j + (i - 1) * width for j in range(len(_STATS))]
            ax.bar(xs, [getattr(stats, s) for s in _STATS], width, label=label, color=color)
        ax.set_xticks(range(len(_STATS)), _STATS)
        ax.set_title(f"batch {b}: B/A {_fmt(bl.ratio_p50)}, A'/A {_fmt(bl.aa_ratio_p50)}", fontsize=9)
        ax.set_ylabel("ms per run")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title(report), fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(out, format="png", dpi=110)
    finally:
        plt.close(fig)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
