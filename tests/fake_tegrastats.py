"""A fake `tegrastats` for the tests (a Jetson's sensors cannot be reached here): prints the recorded
AGX Orin line of tests/fixtures/tegrastats every `--interval` ms, its VDD_GPU_SOC rail stepping through
a fixed cycle, until it is stopped; with FAKE_TEGRASTATS_LOG set it also appends each line's
(monotonic time, total mW) there, for the test to compare the board side's samples with."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

LINE = (Path(__file__).parent / "fixtures" / "tegrastats" / "agx-orin.txt").read_text().strip()
GPU_MW = (2390, 4100, 5200, 6800, 5200, 3100, 2390)    # the GPU rail's cycle: idle-ish, then load
OTHER_MW = 796 + 3522 + 301                              # the other three rails, as recorded


def main(argv: list[str]) -> int:
    interval = int(argv[argv.index("--interval") + 1]) if "--interval" in argv else 1000
    log = os.environ.get("FAKE_TEGRASTATS_LOG")
    k = 0
    while True:
        gpu = GPU_MW[k % len(GPU_MW)]
        if log:     # stamped before it is printed: the reader's stamp of the line comes after this one
            with open(log, "a") as f:
                f.write(f"{time.monotonic()} {gpu + OTHER_MW}\n")
        print(LINE.replace("VDD_GPU_SOC 2390mW/2390mW", f"VDD_GPU_SOC {gpu}mW/{gpu}mW"), flush=True)
        k += 1
        time.sleep(interval / 1000)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
