"""What software stack a board has: read from files and version attributes, nothing installed.

Every field is None where the board does not have it (no L4T outside a Jetson, no nvpmodel, a
governor the kernel does not expose)."""

from __future__ import annotations

import importlib
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_MODEL = Path("/proc/device-tree/model")
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def probe() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        **board(),
        "system": platform.system(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "onnxruntime": _onnxruntime(),
        "tensorrt": _version("tensorrt"),
        "power_mode": power_mode(),
        "jetson_clocks": _jetson_clocks(),
        "cpu_governor": _read(GOVERNOR),
    }


def board() -> dict[str, str | None]:
    """The machine itself: what a GPU engine built on it is tied to besides its libraries."""
    return {
        "machine": platform.machine(),
        "l4t": l4t_release(_read(NV_TEGRA_RELEASE)),
        "model": (_read(DEVICE_MODEL) or "").rstrip("\x00") or None,   # "NVIDIA Jetson Orin NX ... Developer Kit"
    }


def l4t_release(text: str | None) -> str | None:
    """`# R36 (release), REVISION: 4.3, GCID: ...` -> `36.4.3`."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:   # not installed, or installed broken: either way the board lacks it
        return None


def _onnxruntime() -> dict[str, Any] | None:
    try:
        import onnxruntime as ort
    except Exception:
        return None
    return {"version": ort.__version__, "providers": list(ort.get_available_providers())}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def power_mode() -> str | None:
    """The Jetson power mode (`nvpmodel -q`), None where there is none."""
    m = re.search(r"NV Power Mode:\s*(\S+)", _run(["nvpmodel", "-q"]) or "")
    return m.group(1) if m else None


def _jetson_clocks() -> bool | None:
    out = _run(["jetson_clocks", "--show"])
    if out is None:
        return None
    # Locked clocks show MinFreq == MaxFreq == CurrentFreq for every CPU.
    cpus = re.findall(r"MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", out)
    return bool(cpus) and all(a == b == c for a, b, c in cpus)
