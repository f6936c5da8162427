"""Peak memory of one ONNX Runtime session, measured in a process of its own.

    python -m edgeprune.memprobe model.onnx --threads 1 --batch 1 [--input x.npy] [--build-json '{...}']

prints one JSON line: `peak_rss_mb` (VmHWM of this process after creating the session and
running it), `baseline_rss_mb` (RSS right before the session was created, with onnxruntime and
numpy already imported) and `model_rss_mb` = peak - baseline, the memory the model costs.
The CPU memory arena is always off here: it grows in powers of two and never shrinks, so with
it on the figure says more about the allocator than about the model.

Own process because a process's high-water mark only goes up: measured in the parent, the second
model would inherit the first one's peak. Minimal imports, so it also runs on a device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS, so import-time transients do not
    # count as the model's peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def probe(model: Path, *, threads: int, batch: int, input_npy: Path | None, build_json: str | None, runs: int) -> dict:
    import numpy as np

    from edgeprune.backends.base import Engine
    from edgeprune.measure.timing import tile_rows
    from edgeprune.backends.onnxruntime import OnnxRuntimeBackend
    from edgeprune.targets import BuildPolicy, Target, build_policy_from_dict

    build = build_policy_from_dict(json.loads(build_json), "--build-json") if build_json else BuildPolicy()
    build = dataclasses.replace(build, threads=threads, cpu_mem_arena=False)
    target = Target(name="memprobe", description="", backend="onnxruntime", build=build)
    backend = OnnxRuntimeBackend()

    x = np.load(input_npy) if input_npy else None

    baseline = _status_kb("VmRSS") or 0
    reset = _reset_peak()
    session = backend.open(Engine(path=model, backend="onnxruntime", target="memprobe", source=model), target)
    if x is None:
        shape = [batch if i == 0 or not isinstance(d, int) else d for i, d in enumerate(session.input_shape)]
        x = np.zeros(shape, dtype=session.input_dtype)
    else:
        x = tile_rows(x, batch)
    for _ in range(runs):
        session.run(x)
    peak = _peak_kb()
    return {
        "peak_rss_mb": peak / 1024,
        "baseline_rss_mb": baseline / 1024,
        "model_rss_mb": max(peak - baseline, 0) / 1024,
        "after_run_rss_mb": (_status_kb("VmRSS") or 0) / 1024,
        "peak_reset": reset,
        "batch": batch,
        "threads": threads,
        "runs": runs,
        "arena": False,
        "providers": session.providers,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeprune.memprobe", description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input", type=Path, default=None, help=".npy with real input rows (tiled to --batch)")
    ap.add_argument("--build-json", default=None, help="the target's [build] table as JSON")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    # Imports before the baseline reading are part of the process, not of the model.
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    from edgeprune.errors import EdgepruneError

    try:
        result = probe(
            args.model, threads=args.threads, batch=args.batch, input_npy=args.input, build_json=args.build_json, runs=args.runs
        )
    except EdgepruneError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
