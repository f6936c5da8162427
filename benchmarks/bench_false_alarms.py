"""How often the nightly regression verdict cries wolf, and whether it still sees a slower model.

Each repetition is one history of ten unchanged runs of one cell, then the cell's model swapped for
one with 1.65x its MACs, judged the way `bench` drives it (a suspect measured once more). Real
ONNX Runtime timings through the shared timing loop, one session per "night", all timed in one
interleaved loop per repetition (tests/test_bench_regress.py says why). Also times `History.record`
(one fsync'd transaction). Writes benchmarks/results/false_alarms.json.

    python benchmarks/bench_false_alarms.py --reps 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402

from edgeprune.bench.history import History  # noqa: E402
from provenance import write_results  # noqa: E402
from tests.cost_models import mlp_onnx  # noqa: E402
from tests.test_bench_history import CONTEXT, result  # noqa: E402
from tests.test_bench_regress import FAST, SLOW, _session, as_result, cell, measure, run_once  # noqa: E402

RUNS = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp())
    fast, slow = mlp_onnx(d / "fast.onnx", FAST), mlp_onnx(d / "slow.onnx", SLOW)
    spacer = _session(mlp_onnx(d / "spacer.onnx", SLOW, seed=1))
    c = cell()
    suspects = regressions = detected = 0
    changes: list[float] = []
    for rep in range(args.reps):
        m = measure([fast] * (2 * RUNS) + [slow, slow], spacer)
        with History(d / f"h{rep}.sqlite") as h:
            for i in range(RUNS):
                _, first, v = run_once(h, [as_result(m[i], c)], [as_result(m[RUNS + i], c)])
                suspects += len(first.suspects)
                regressions += len(v.regressions)
            p50 = [r["p50_ms"] for r in h.results() if r["attempt"] == 0]
            changes += list(np.abs(np.diff(p50)) / np.asarray(p50[:-1]))
            _, _, v = run_once(h, [as_result(m[2 * RUNS], c)], [as_result(m[2 * RUNS + 1], c)])
            detected += v.exit_code == 1
    with History(d / "timing.sqlite") as h:
        run = h.start_run(CONTEXT, "timing")
        rounds = list(np.linspace(1.0, 2.0, 24))
        t0 = time.perf_counter()
        for i in range(200):
            h.record(run, result(rounds, cell={**c, "sparsity": i / 1000}))
        record_ms = 1000 * (time.perf_counter() - t0) / 200
    record = {"unchanged_runs": args.reps * RUNS, "first_attempt_suspects": suspects, "regressions": regressions,
              "p50_change_median": float(np.median(changes)), "p50_change_max": float(np.max(changes)),
              "slower_model_flagged": detected, "slower_model_trials": args.reps, "record_ms": record_ms}
    md = (f"{record['unchanged_runs']} unchanged runs: {suspects} suspects on the first attempt, {regressions} "
          f"regressions (run-to-run p50 change median {100 * record['p50_change_median']:.1f} %, max "
          f"{100 * record['p50_change_max']:.1f} %); the slower model flagged in {detected}/{args.reps}; "
          f"record(): {record_ms:.1f} ms per result.\n")
    write_results(args.out, "false_alarms", record, md)
    print(md, end="")


if __name__ == "__main__":
    main()
