"""Is a pruned/dense latency ratio a speed-up, or noise? One answer for the report and `explain`.

The noise band around 1 is NOISE_SCALE x |A'/A - 1|, at least NOISE_FLOOR. Twice, because the A/A
ratio is one draw of the noise and B/A is another, independent one; the floor because p50s of a few
hundred runs do not resolve differences finer than a couple of percent even when the A/A control
happens to land on 1.00.
"""

from __future__ import annotations

NOISE_SCALE = 2.0
NOISE_FLOOR = 0.02
# An A/A ratio further than this from 1 means the machine itself was too noisy to trust.
NOISY_AA = 0.10


def noise_band(aa_ratio: float) -> float:
    """Half-width of the band around 1 inside which a pruned/dense ratio is noise."""
    return max(NOISE_SCALE * abs(aa_ratio - 1.0), NOISE_FLOOR)


def within_noise(ratio: float, aa_ratio: float) -> bool:
    return abs(ratio - 1.0) <= noise_band(aa_ratio)


def verdict(ratio: float, aa_ratio: float) -> str:
    """"no measurable speed-up", "1.52x faster" or "1.20x slower"."""
    if within_noise(ratio, aa_ratio):
        return "no measurable speed-up"
    return f"{1 / ratio:.2f}x faster" if ratio < 1.0 else f"{ratio:.2f}x slower"


def noisy_machine(aa_ratio: float) -> str | None:
    """Why the run cannot be trusted for small ratios, or None."""
    off = abs(aa_ratio - 1.0)
    if off <= NOISY_AA:
        return None
    return f"the dense model timed against itself differs by {off:.0%}: the machine was noisy"


def latency_notes(batch: int, ratio: float, aa_ratio: float, what: str = "pruned model") -> list[str]:
    """The report's sentences on one batch size's pruned/dense p50 ratio and its A/A control."""
    band = noise_band(aa_ratio)
    r, aa = ratio, aa_ratio
    if within_noise(r, aa):
        notes = [f"Batch {batch}: the pruned/dense p50 ratio {r:.2f} lies within the A/A noise band (dense vs itself "
                 f"{aa:.2f}, band ±{band:.0%}): no measurable latency difference."]
    elif r < 1.0:
        notes = [f"Batch {batch}: the {what} is {1 / r:.2f}× as fast as the dense one at p50 "
                 f"(ratio {r:.2f}; A/A control {aa:.2f})."]
    else:
        notes = [f"Batch {batch}: the {what} is slower than the dense one at p50 (ratio {r:.2f}; A/A control {aa:.2f})."]
    noisy = noisy_machine(aa)
    if noisy:
        notes.append(f"Batch {batch}: {noisy}; repeat the run or raise run.iterations before trusting small ratios.")
    return notes
