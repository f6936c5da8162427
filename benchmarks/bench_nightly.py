"""The nightly example's figures (issue 13): `make bench-nightly` from nothing, then the same bench
again with --reuse-measurements. Writes benchmarks/results/nightly.json.

    python benchmarks/bench_nightly.py --fresh          # removes runs/nightly first (models, history, cache)
    python benchmarks/bench_nightly.py --remeasure 10   # then 10 more runs of unchanged cells: any alarm?

Records the wall time of training the two models, of the first bench run (18 cells compressed,
deployed and measured) and of the second (nothing changed: every result reused), the load average
around them (the machine is shared), and each cell's accuracy and pruned/dense p50 from the history.

With ``--remeasure N``: N more invocations of `edgeprune bench` that measure everything again with
nothing changed (the mlp model's cells of the example, into a history of their own): the verdict's
false alarms on the real runner, counted by exit code and flag kind.
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


def timed(cmd: list[str], stdout_only: bool = False) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return round(time.perf_counter() - t0, 1), p.returncode, p.stdout if stdout_only else p.stdout + p.stderr


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--fresh", action="store_true", help="remove runs/nightly first (as in a fresh clone)")
    ap.add_argument("--venv", default=None, help="the venv make uses (its VENV; default the Makefile's .venv)")
    ap.add_argument("--remeasure", type=int, default=0, help="then this many runs of unchanged cells (false alarms)")
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
                                      "--reuse-measurements", "--json"], stdout_only=True)
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
    if args.remeasure:
        record["remeasure"] = remeasure(edgeprune, args.remeasure)
    path = write_results(args.out, "nightly", record)
    print(json.dumps({k: record[k] for k in ("seconds", "exit_codes", "second_run", "load_average")}, indent=1))
    print(f"wrote {path}")
    return 0


def remeasure(edgeprune: str, n: int) -> dict:
    """n + 1 runs of the example's mlp cells with nothing changed, each measured anew (the first is the
    baseline); every later run's exit code and flags by kind."""
    text = CONFIG.read_text()
    cfg = NIGHTLY / "unchanged.toml"
    # the example with its second model left out; paths stay relative to examples/
    keep = text.replace('[[models]]\nname = "cnn"\npath = "../runs/nightly/cnn.pt"\n', "")
    assert keep != text, "examples/nightly.toml changed shape: update bench_nightly.remeasure"
    cfg.write_text(keep.replace('"../runs/nightly/', '"'))
    history = NIGHTLY / "unchanged.sqlite"
    for stale in NIGHTLY.glob("unchanged.sqlite*"):
        stale.unlink()
    runs = []
    for i in range(n + 1):
        t, rc, out = timed([edgeprune, "bench", str(cfg), "--history", str(history), "--json"], stdout_only=True)
        if rc == 2:
            raise SystemExit(out[-2000:])
        r = json.loads(out[out.index("{"):])
        kinds: dict[str, int] = {}
        for f in r["flags"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        runs.append({"run": i, "exit_code": rc, "seconds": t, "cells": r["cells"], "flags": kinds,
                     "remeasured": len(r["remeasured"]), "load_average": load_average()})
        print(json.dumps(runs[-1]))
    later = runs[1:]
    return {"command": f"edgeprune bench {cfg.relative_to(ROOT)} --history {history.relative_to(ROOT)} "
                       f"(x{n + 1}, nothing changed)",
            "runs": runs, "cells": runs[0]["cells"], "remeasurements": len(later),
            "exit_1": sum(r["exit_code"] == 1 for r in later),
            "regressions": sum(r["flags"].get("regression", 0) for r in later),
            "suspects": sum(r["remeasured"] for r in later),
            "board_drift": sum(r["flags"].get("board-drift", 0) for r in later)}


if __name__ == "__main__":
    sys.exit(main())
