"""Dense vs pruned TensorRT engines side by side: timed here (TensorRT installed), or read back
from the files `trtexec_build.sh` / `trtexec_bench.sh` wrote on the device.

Timing here is `edgeprune.measure.timing`'s loop, as for every backend: the dense engine (A), a second context on it (A', the
A/A control) and the pruned engine (B), one execution each per round in rotating order, so the GPU's
clock and thermal drift hit all three alike. Each execution is timed with a CUDA event pair on its
stream (GPU time, comparable to trtexec's "GPU Compute Time").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.backends.trt_plan import load_engine_plans
from edgeprune.backends.trtexec import (parse_sparsity, parse_trtexec_layer_info, parse_trtexec_profile,
                                        parse_trtexec_summary, parse_trtexec_times)
from edgeprune.errors import InputError

if TYPE_CHECKING:
    from edgeprune.data import ArrayDataset
    from edgeprune.targets import Target


def device_results(run_dir: Path) -> dict[str, Any]:
    """Read what the device scripts wrote back into `run_dir` (build logs, layer info, times,
    profiles, benchmark logs) into one dense-vs-pruned summary. Files not there are listed
    under "missing" rather than failing, so a partial run can still be read."""
    run_dir = Path(run_dir)
    plans = load_engine_plans(run_dir)
    out: dict[str, Any] = {"models": {}, "missing": []}

    def read(name: str, parser, *args, **kw):
        path = run_dir / name
        if not path.is_file():
            out["missing"].append(name)
            return None
        return parser(path, *args, **kw)

    for label, plan in plans.items():
        m: dict[str, Any] = {"batches": {}}
        log = run_dir / plan.build_log
        if log.is_file():
            m["sparsity"] = parse_sparsity(log.read_text(errors="replace")).__dict__
        else:
            out["missing"].append(plan.build_log)
        info = read(plan.layer_info, parse_trtexec_layer_info)
        if info is not None:
            m["layer_types"] = info.layer_types()
            m["sparse_weight_layers"] = [layer.name for layer in info.layers if layer.sparse_weights]
        for bs in plan.batch_sizes:
            stem = f"{label}.b{bs}"
            row: dict[str, Any] = {}
            times = read(f"{stem}.times.json", parse_trtexec_times, warmup_ms=plan.warmup_ms if plan.generation == "8.2" else 0.0,
                         percentiles=tuple(plan.percentiles))
            if times is not None:
                row["gpu_compute_ms"] = times.compute_ms.__dict__
                row["latency_ms"] = times.latency_ms.__dict__
                row["throughput_qps"] = times.throughput_qps
            prof = read(f"{stem}.profile.json", parse_trtexec_profile)
            if prof is not None:
                row["slowest_layers"] = [(lt.name, lt.average_ms) for lt in prof.layers[:5]]
            bench = run_dir / f"{stem}.bench.log"
            if bench.is_file():
                try:
                    row["warnings"] = parse_trtexec_summary(bench.read_text(errors="replace")).warnings
                except InputError:
                    row["warnings"] = []
            m["batches"][str(bs)] = row
        out["models"][label] = m
    ratios = {}
    for bs, row in out["models"].get("dense", {}).get("batches", {}).items():
        other = out["models"].get("pruned", {}).get("batches", {}).get(bs, {})
        if "gpu_compute_ms" in row and "gpu_compute_ms" in other:
            ratios[bs] = other["gpu_compute_ms"]["median"] / row["gpu_compute_ms"]["median"]
    out["pruned_over_dense_median_gpu_compute"] = ratios
    return out
