"""Results: one versioned schema, rendered as JSON, Markdown, a terminal table and a plot."""

from edgeprune.report.schema import (
    SCHEMA,
    Agreement,
    BatchLatency,
    LatencyStats,
    ModelSide,
    Ratios,
    Report,
    read_report,
)
from edgeprune.report.write import write_report

__all__ = [
    "SCHEMA",
    "Agreement",
    "BatchLatency",
    "LatencyStats",
    "ModelSide",
    "Ratios",
    "Report",
    "read_report",
    "write_report",
]
