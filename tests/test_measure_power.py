"""tegrastats parsing per Jetson generation, and energy per inference against a hand-computed integral."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeprune.measure.power import energy, integrate_mj, parse_rails, total_mw

LINES = {p.stem: p.read_text().strip() for p in (Path(__file__).parent / "fixtures" / "tegrastats").glob("*.txt")}


@pytest.mark.parametrize("board, total, rails", [
    ("nano", 4520.0, ["POM_5V_IN"]),                                   # the other POM_5V_* are inside it
    ("tx2", 14025.0, ["VDD_IN"]),
    ("orin-nano", 4556.0, ["VDD_IN"]),
    ("agx-xavier", 1155 + 385 + 2504 + 0 + 192 + 2692.0, ["CPU", "CV", "GPU", "SOC", "SYS5V", "VDDRQ"]),
    ("agx-orin", 2390 + 796 + 3522 + 301.0, ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]),
    ("jetpack7", 5139 + 812 + 3300.0, ["VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]),
])
def test_total_power_per_generation(board, total, rails):
    assert total_mw(LINES[board]) == (total, rails)


def test_memory_and_clock_fields_are_not_rails():
    rails = parse_rails(LINES["nano"])
    assert set(rails) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}       # not RAM, SWAP, IRAM, EMC_FREQ
    assert rails["POM_5V_CPU"] == 1078.0                                  # the instantaneous value, not the average
    assert total_mw("RAM 1180/3965MB (lfb 1x2MB) CPU [30%@1036]") is None


def test_energy_equals_the_hand_computed_integral():
    # a recorded trace: 10 Hz samples of a TX2 line whose VDD_IN steps 3000 -> 5000 mW and back
    base = LINES["tx2"]
    watts = [3000, 3000, 5000, 5000, 5000, 5000, 3000, 3000]
    lines = [(0.1 * k, base.replace("VDD_IN 14025/14416", f"VDD_IN {w}/4000")) for k, w in enumerate(watts)]
    # window [0.15, 0.55]: edges interpolated; by hand (mW·s):
    #   0.15-0.2: P 4000->5000, 0.05 s -> 225;  0.2-0.5: 5000 flat, 0.3 s -> 1500;  0.5-0.55: 5000 -> 4000 -> 225
    assert integrate_mj([(t, float(w)) for (t, _), w in zip(lines, watts)], 0.15, 0.55) == pytest.approx(1950.0)
    idle = [(10 + 0.1 * k, base.replace("VDD_IN 14025/14416", "VDD_IN 3000/3000")) for k in range(5)]
    p = energy(lines, 0.15, 0.55, inferences=100, idle_lines=idle)
    assert p.energy_mj_per_inference == pytest.approx(19.5)
    assert p.mean_w == pytest.approx(1950.0 / 0.4 / 1000)
    assert p.idle_w == pytest.approx(3.0)
    assert p.energy_above_idle_mj_per_inference == pytest.approx((4.875 - 3.0) * 0.4 * 1000 / 100)
    assert p.rails == ["VDD_IN"] and p.samples == 4


def test_a_window_the_samples_do_not_cover_is_refused():
    with pytest.raises(ValueError, match="do not cover"):
        integrate_mj([(0.0, 1.0), (1.0, 1.0)], 0.5, 2.0)
    with pytest.raises(ValueError, match="no power rails"):
        energy([(0.0, "RAM 1/2MB"), (1.0, "RAM 1/2MB")], 0.0, 1.0, 10)
