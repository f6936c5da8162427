"""What every benchmark result records about where it was made: commit, library versions, machine.

One helper for every writer in benchmarks/, so a figure in the README can always be traced to the
code and the host that produced it (and two results can be told apart when they disagree).

    record["provenance"] = provenance()
    write_results(out, "e2e", record, markdown_text)
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from edgeprune.fileio import atomic_write
from edgeprune.versions import git_state as source_state, installed_versions

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "edgeprune.provenance/1"
# The distributions whose versions can move a benchmark figure (missing ones are recorded as None).
PACKAGES = ("edgeprune", "torch", "torch-pruning", "onnx", "onnxruntime", "numpy", "scikit-learn")


def git_state() -> dict[str, Any]:
    """The checked-out commit and the files that differ from it (a run on a dirty tree says so)."""
    return source_state(ROOT, ("edgeprune", "benchmarks"))


# The tree as it was when the benchmark started: its code was imported then, and a long run must not
# take the commit of whatever was checked out by the time it writes its results.
_AT_START = git_state()


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **installed_versions(PACKAGES)}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_flags() -> list[str]:
    """The SIMD extensions that decide which ONNX Runtime kernels run (AVX-512 blocks 16 fp32 lanes, AVX2 8)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return sorted(f for f in have if f.startswith(("avx", "sse4", "fma", "neon", "asimd", "amx")))
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    from edgeprune.backends.onnxruntime import cpu_name

    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "simd": cpu_flags(), "platform": platform.platform(),
            "load_average_end": load_average()}


def provenance() -> dict[str, Any]:
    """Commit, versions and machine of the run that is writing its results now."""
    now = git_state()
    git = dict(_AT_START, **({} if now == _AT_START else {"changed_during_run": now}))
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git,
            "versions": versions(), "machine": machine()}


def write_results(out: Path, stem: str, record: dict[str, Any], markdown: str | None = None) -> Path:
    """Write OUT/STEM.json (with the run's provenance, unless the record already carries it) and
    OUT/STEM.md, each atomically."""
    record.setdefault("provenance", provenance())
    path = atomic_write(Path(out) / f"{stem}.json", (json.dumps(record, indent=2, default=str) + "\n").encode(),
                        force=True)
    if markdown is not None:
        atomic_write(Path(out) / f"{stem}.md", markdown.encode(), force=True)
    return path
