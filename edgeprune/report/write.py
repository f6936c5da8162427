"""Write a report's files: JSON, Markdown and the latency plot, each atomically."""

from __future__ import annotations

import io
from pathlib import Path

from edgeprune.fileio import atomic_write
from edgeprune.report.plot import latency_png
from edgeprune.report.render import to_markdown
from edgeprune.report.schema import Report


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `latency.png` into out_dir, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "latency.png"}
    atomic_write(paths["json"], report.to_json().encode(), force=True)
    atomic_write(paths["markdown"], to_markdown(report).encode(), force=True)
    buf = io.BytesIO()
    latency_png(report, buf)
    atomic_write(paths["plot"], buf.getvalue(), force=True)
    return paths
