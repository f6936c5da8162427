"""The host's fp32 SIMD width (edgeprune/host_simd.py) from /proc/cpuinfo flags and the machine name."""

import platform

import pytest

from edgeprune import host_simd as hs

# First lines of real /proc/cpuinfo files (flags shortened to the ones that matter, in their real order).
XEON_AVX512 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
RYZEN_AVX2 = """processor\t: 0
model name\t: AMD Ryzen 7 3700X 8-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""
SANDY_BRIDGE = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx\n"
ATOM = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2\n"
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""
PI3_32BIT = "processor\t: 0\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt\n"


@pytest.mark.parametrize(("text", "machine", "lanes", "isa"), [
    (XEON_AVX512, "x86_64", 16, "AVX-512"),
    (RYZEN_AVX2, "x86_64", 8, "AVX2"),
    (SANDY_BRIDGE, "x86_64", 8, "AVX"),
    (ATOM, "x86_64", 4, "SSE"),
    (PI5, "aarch64", 4, "NEON"),
    (PI3_32BIT, "armv7l", 4, "NEON"),
])
def test_lanes_from_cpuinfo_flags(text, machine, lanes, isa):
    assert hs.simd_of(hs.cpuinfo_flags(text), machine) == hs.Simd(lanes, isa)


def test_arm64_is_neon_whatever_the_flags_say():
    # macOS on Apple silicon has no /proc/cpuinfo and calls itself arm64
    assert hs.simd_of(None, "arm64") == hs.Simd(4, "NEON")
    assert hs.simd_of(set(), "aarch64").lanes == 4


def test_unknown_cpus_fall_back_to_8_and_say_so():
    for flags, machine in ((None, "x86_64"), (set(), "riscv64"), (hs.cpuinfo_flags("no flags here"), "")):
        s = hs.simd_of(flags, machine)
        assert s.lanes == hs.FALLBACK_LANES == 8 and "assumed" in s.isa


def test_this_host_matches_its_own_cpuinfo():
    s = hs.host_simd()
    try:
        flags = hs.cpuinfo_flags(hs.CPUINFO.read_text())
    except OSError:
        flags = None
    assert s == hs.simd_of(flags, platform.machine()) and s.lanes in (4, 8, 16)
    if flags and "avx512f" in flags:
        assert s == hs.Simd(16, "AVX-512")


def test_unreadable_cpuinfo_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(hs, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(hs.platform, "machine", lambda: "x86_64")
    assert hs.host_simd() == hs.Simd(8, "x86_64, no /proc/cpuinfo: assumed AVX2")
