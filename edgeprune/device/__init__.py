"""The board's side of a remote deploy: `python3 -m edgeprune.device probe | build JOB | run JOB`.

Pushed with every run as plain files (`DEVICE_FILES`) and run by the board's own python: it needs
the standard library, numpy and the runtime the board has (onnxruntime, or TensorRT with cuda-python), never
torch, onnx, typer or rich. It measures with the same code a local deploy does
(`edgeprune.measure.pair`), so a board's numbers and this machine's are made the same way.
"""

from __future__ import annotations

from pathlib import Path

# What the board imports, relative to the package's parent folder. A module missing here fails the
# remote tests (they run the device side from exactly these files).
DEVICE_FILES = (
    "edgeprune/__init__.py",
    "edgeprune/errors.py",
    "edgeprune/fileio.py",
    "edgeprune/versions.py",
    "edgeprune/targets.py",
    "edgeprune/memprobe.py",
    "edgeprune/backends/__init__.py",
    "edgeprune/backends/base.py",
    "edgeprune/backends/onnxruntime.py",
    "edgeprune/backends/tensorrt.py",
    "edgeprune/backends/trt_plan.py",
    "edgeprune/backends/trtexec.py",
    "edgeprune/backends/trt_versions.py",
    "edgeprune/measure/__init__.py",
    "edgeprune/measure/accuracy.py",
    "edgeprune/measure/timing.py",
    "edgeprune/measure/pair.py",
    "edgeprune/measure/power.py",
    "edgeprune/device/__init__.py",
    "edgeprune/device/__main__.py",
    "edgeprune/device/probe.py",
    "edgeprune/device/job.py",
    "edgeprune/device/runner.py",
)


def device_files() -> dict[str, Path]:
    """{path on the board, relative to the package root: the file here}."""
    root = Path(__file__).resolve().parents[2]
    return {name: root / name for name in DEVICE_FILES}
