"""The nightly example's figures (issue 13): `make bench-nightly` from nothing, then the same bench
again with --reuse-measurements. Writes benchmarks/results/nightly.json.

    python benchmarks/bench_nightly.py --fresh          # removes runs/nightly first (models, history, cache)

Records the wall time of training the two models, of the first bench run (18 cells compressed,
deployed and measured) and of the second (nothing changed: every result reused), the load average
around them (the machine is shared), and each cell's accuracy and pruned/dense p50 from the history.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from provenance import load_average, write_results  # noqa: E402
from edgeprune.bench.history import History  # noqa: E402

NIGHTLY = ROOT / "runs" / "nightly"
CONFIG = ROOT / "examples" / "nightly.toml"


def timed(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return round(time.perf_counter() - t0, 1), p.returncode, p.stdout + p.stderr


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--fresh", action="store_true", help="remove runs/nightly first (as in a fresh clone)")
    ap.add_argument("--venv", default=None, help="the venv make uses (its VENV; default the Makefile's .venv)")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(NIGHTLY, ignore_errors=True)
    # a venv named here is someone's installed one: make uses it as it is, never reinstalls into it
    make = ["make"] + ([f"VENV={args.venv}", "-o", f"{args.venv}/.installed"] if args.venv else [])
    edgeprune = str(Path(args.venv or ROOT / ".venv") / "bin" / "edgeprune")
    load_before = load_average()
    t_train, rc, log = timed(make + ["runs/nightly/mlp.pt", "runs/nightly/cnn.pt"])
    if rc:
        print(log)
        return rc
    t_first, rc_first, log_first = timed(make + ["bench-nightly"])
    print(log_first[-3000:])
    if rc_first == 2:   # bad input: there is no run to time a second time
        return rc_first
    load_mid = load_average()
    history = NIGHTLY / "bench.sqlite"
    t_second, rc_second, out = timed([edgeprune, "bench", str(CONFIG), "--history", str(history),
                                      "--reuse-measurements", "--json"])
    second = json.loads(out[out.index("{"):])
    with History(history) as h:
        runs = h.runs()
        first_run = runs[-2]["id"]
        cells = [{"cell": r["cell_id"], "accuracy": r["accuracy"], "p50_ms": r["p50_ms"],
                  "p50_ratio": r["p50_ms"] / r["dense_p50_ms"] if r["dense_p50_ms"] else None}
                 for r in h.results(run_id=first_run) if r["attempt"] == 0]
    record = {
        "command": "make bench-nightly (after a fresh clone: trains runs/nightly/{mlp,cnn}.pt), then "
                   "edgeprune bench examples/nightly.toml --history runs/nightly/bench.sqlite --reuse-measurements",
        "fresh": args.fresh,
        "cells": len(cells),
        "seconds": {"train_models": t_train, "first_bench": t_first, "make_bench_nightly": round(t_train + t_first, 1),
                    "second_bench_reuse": t_second},
        "exit_codes": {"first": rc_first, "second": rc_second},
        "second_run": {k: second[k] for k in ("run_id", "measured", "reused", "compressions")},
        "load_average": {"before": load_before, "after_first": load_mid, "end": load_average()},
        "cpu_count": os.cpu_count(),
        "results": cells,
    }
    path = write_results(args.out, "nightly", record)
    print(json.dumps({k: record[k] for k in ("seconds", "exit_codes", "second_run", "load_average")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
