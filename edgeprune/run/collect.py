"""`collect RUN`: the report of a run measured on a board by hand, from what the board left in RUN.

Two kinds of run directory are read, into the same report.json / report.md / plots a live run writes:

* the device side's `result.json` (`python -m edgeprune.device run JOB`: a `PairMeasurement`) beside
  the job's `job.json`, `dense.onnx` and `pruned.onnx` — a job run by hand, or the run directory of
  a `deploy --host`;
* the outputs of the `trtexec_build.sh` and `trtexec_bench.sh` that `deploy` wrote for a TensorRT
  target it could not measure here: per batch size the dense, pruned and dense-again (the A/A
  control) `--exportTimes` files, the engines, their `--exportLayerInfo` files and the bench logs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgeprune.backends.base import Engine
from edgeprune.device.job import JOB, MODELS, RESULT, target_of
from edgeprune.errors import InputError
from edgeprune.measure.pair import PairMeasurement
from edgeprune.report.schema import Report
from edgeprune.targets import Target

PLAN_FILE = "engine_plan.json"
# trtexec (8.5 on) logs the context it times: "Created execution context with device memory size: 0.0234 MiB"
_DEVICE_MEMORY = re.compile(r"execution context with device memory size:\s*([\d.]+)\s*MiB")
_TRT_VERSION = re.compile(r"TensorRT version:\s*([\d.]+)")


def collect_run(run_dir: Path) -> Report:
    """Write and return the report of the measurement the board left in ``run_dir``."""
    from edgeprune.report.write import write_report

    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"run directory not found: {run}")
    if (run / RESULT).is_file():
        report = _from_result(run)
    elif (run / PLAN_FILE).is_file():
        report = _from_trtexec(run)
    else:
        raise InputError(f"{run}: no {RESULT} (the device side's) and no {PLAN_FILE} (deploy's for trtexec): "
                         "nothing to collect")
    write_report(report, run)
    return report


def read_result(run_dir: Path, target: Target) -> PairMeasurement:
    """The device side's `result.json` in ``run_dir``, its engine paths made this machine's."""
    d = json.loads((run_dir / RESULT).read_text())
    for e in d["engines"].values():
        e["path"] = str(run_dir / e["path"])
        e["source"] = str(run_dir / Path(e["source"]).name)
        if "int8_onnx" in e["extra"]:       # quantised on the host: the file is in the run directory
            e["extra"]["int8_onnx"] = str(run_dir / Path(e["extra"]["int8_onnx"]).name)
    return PairMeasurement.from_dict(d, target.backend, target.name)


def _from_result(run: Path) -> Report:
    from edgeprune.profiling import report_from_measurement

    _require(run, [JOB, *MODELS.values()])
    target = target_of(json.loads((run / JOB).read_text()))
    m = read_result(run, target)
    report = report_from_measurement(m, run / MODELS["dense"], run / MODELS["pruned"], target)
    report.notes.insert(0, f"Collected from the device side's {RESULT}: measured on {m.hostname or 'the board'}.")
    return report


def _from_trtexec(run: Path) -> Report:
    from edgeprune.backends.trt_plan import EnginePlan
    from edgeprune.backends.trtexec import parse_trtexec_times
    from edgeprune.profiling import report_from_measurement

    doc = json.loads((run / PLAN_FILE).read_text())
    if "target_spec" not in doc:
        raise InputError(f"{run / PLAN_FILE} was written by an older edgeprune (it holds no target): deploy again")
    target = target_of({"target": doc["target_spec"]})
    plans = {k: EnginePlan.from_dict(v) for k, v in doc["models"].items()}
    batches = plans["dense"].batch_sizes
    runs = {"dense": "dense.b{}.times.json", "control": "dense.b{}.control.times.json", "pruned": "pruned.b{}.times.json"}
    _require(run, [p.engine for p in plans.values()] + [f.format(b) for b in batches for f in runs.values()]
             + [f"{k}.onnx" for k in ("dense", "pruned")])
    # 8.2 exports its warm-up iterations too; later versions drop them
    warmup = plans["dense"].warmup_ms if plans["dense"].generation == "8.2" else 0.0
    times = {}
    for bs in batches:
        times[bs] = [np.round(np.asarray(parse_trtexec_times(run / f.format(bs), warmup_ms=warmup).compute_samples_ms)
                              * 1e6).astype(np.int64) for f in runs.values()]
    logs = {label: " ".join(_read(run / f"{label}.b{bs}.bench.log") for bs in batches) for label in ("dense", "pruned")}
    engines, memory = {}, {}
    for label in ("dense", "pruned"):
        p = plans[label]
        mib = _DEVICE_MEMORY.search(logs[label])
        engines[label] = Engine(path=run / p.engine, backend="tensorrt", target=target.name, source=run / p.onnx,
                                extra={"layer_info": p.layer_info, "plan": PLAN_FILE})
        memory[label] = {"peak_rss_mb": None, "model_rss_mb": None,
                         "device_memory_bytes": round(float(mib.group(1)) * 2**20) if mib else None}
    version = _TRT_VERSION.search(logs["dense"])
    m = PairMeasurement(
        batch_sizes=list(batches), static_batch=None if plans["dense"].dynamic_batch else batches[0], times_ns=times,
        accuracy={"dense": None, "pruned": None}, agreement=None, agreement_fp32=None, memory=memory, engines=engines,
        engine_cache={"dense": "miss", "pruned": "miss"},
        stack={"backend": "tensorrt", "tensorrt": version.group(1) if version else "",
               "target_tensorrt": plans["dense"].tensorrt},
        samples=0,
    )
    report = report_from_measurement(m, run / "dense.onnx", run / "pruned.onnx", target)
    report.run["order"] = "trtexec runs, one engine at a time: A, B, then A' at each batch size"
    report.notes.insert(0, "Collected from trtexec's files: GPU compute time of separate trtexec runs (dense, pruned, "
                           "then dense again as the A/A control), not interleaved; no accuracy (trtexec feeds its own "
                           "inputs): run `deploy --host` for both.")
    return report


def _require(run: Path, names: list[str]) -> None:
    missing = [n for n in names if not (run / n).is_file()]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise InputError(f"{run}: {', '.join(missing[:3])}{more} missing: run the scripts on the board in this "
                         "directory and copy it back whole")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""
