"""The fp32 SIMD width of the CPU edgeprune runs on: the channel multiple the `host-cpu` target wants.

ONNX Runtime's CPU kernels (MLAS) block channels by the vector width: its NCHWc convolution layout
uses blocks of 16 floats with AVX-512 and 8 with AVX2, and NEON registers hold 4. A pruned width
off that multiple leaves a partly filled block in every layer it touches (the INT8 benchmark in
the README: fp32 at 0.760 of dense with multiples of 8, 0.594 with 16, on an AVX-512 host).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# x86 CPUs without /proc/cpuinfo (macOS, Windows): AVX2 is on every x86-64 CPU sold since ~2015, and a
# multiple of 8 is also a multiple of NEON's and SSE's 4.
FALLBACK_LANES = 8


@dataclass(frozen=True)
class Simd:
    """`lanes` fp32 values per vector register, from `isa` (how it was found)."""

    lanes: int
    isa: str


def cpuinfo_flags(text: str) -> set[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text (`flags` on x86, `Features` on ARM)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def simd_of(flags: set[str] | None, machine: str) -> Simd:
    """The fp32 vector width for CPU feature `flags` (None: unknown) on `platform.machine()` `machine`."""
    m = machine.lower()
    if m in ("arm64", "aarch64") or m.startswith("armv8"):
        return Simd(4, "NEON")               # 128-bit Advanced SIMD on every 64-bit ARM core
    if flags is None:
        return Simd(FALLBACK_LANES, f"{machine or 'unknown CPU'}, no /proc/cpuinfo: assumed AVX2")
    if "avx512f" in flags:
        return Simd(16, "AVX-512")
    if "avx2" in flags:
        return Simd(8, "AVX2")
    if "avx" in flags:                       # 256-bit float vectors arrived with AVX, before AVX2
        return Simd(8, "AVX")
    if "neon" in flags or "asimd" in flags:  # 32-bit ARM kernels report `neon`
        return Simd(4, "NEON")
    if flags & {"sse", "sse2"}:
        return Simd(4, "SSE")
    return Simd(FALLBACK_LANES, f"{machine or 'unknown CPU'}, no known SIMD flag: assumed 8")


def host_simd() -> Simd:
    """The SIMD width of this machine's CPU."""
    try:
        flags: set[str] | None = cpuinfo_flags(CPUINFO.read_text())
    except OSError:
        flags = None
    return simd_of(flags, platform.machine())
