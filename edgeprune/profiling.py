"""Dense vs pruned on one target: latency, memory, accuracy, output agreement, size.

Latency is measured with three sessions in one loop: the dense engine (A), the dense engine
opened a second time (A', an A/A control) and the pruned engine (B), in the order A A' B rotated
every round. Interleaving puts all three under the same machine noise, and the A'/A ratio shows
how big that noise is: a pruned/dense ratio inside it is not a speed-up.

Peak memory is measured in a fresh process per model (`edgeprune.memprobe`), because a process's
high-water mark only ever goes up.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeprune.backends import Engine, get_backend
from edgeprune.device.probe import power_mode
from edgeprune.errors import InputError, ShapeError
from edgeprune.fileio import file_digest
from edgeprune.measure.pair import PairMeasurement, build_engines, measure_pair, stack_fingerprint
from edgeprune.measure.timing import round_medians
from edgeprune.measure.verdict import latency_notes, noise_band
from edgeprune.onnx_stats import ModelStats, model_stats, read_metadata, xz_size
from edgeprune.progress import progress_bar
from edgeprune.report.render import format_bytes
from edgeprune.report.schema import Agreement, BatchLatency, LatencyStats, ModelSide, Report
from edgeprune.targets import Target

_BACKEND_NAMES = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}


def profile_pair(
    dense_onnx: Path,
    pruned_onnx: Path,
    target: Target,
    x: np.ndarray,
    y: np.ndarray,
    work_dir: Path,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    progress: bool = True,
    metric: Callable | None = None,
    engines: dict[str, Engine] | None = None,
    engine_cache: Path | None = None,
) -> Report:
    """Build both models for `target`, measure them side by side on real data (x, y), and return
    the report (not yet written: see `edgeprune.report.write_report`). `metric`: the task's own
    score (--metric, recorded in a checkpoint) in place of top-1 accuracy.

    ``engines``: built already (deploy builds TensorRT plans it prepared and checked itself); without
    them the models are checked against the target here, then built. ``engine_cache``: a folder
    where built engines are kept and reused (`measure.pair.build_engines`)."""
    dense_onnx, pruned_onnx, work = Path(dense_onnx), Path(pruned_onnx), Path(work_dir)
    backend = get_backend(target.backend)
    if engines is None:
        check_models(dense_onnx, pruned_onnx, target)
    x, y = _check_data(x, y)
    work.mkdir(parents=True, exist_ok=True)
    n_models = 3 if target.build.precision == "int8" else 2
    steps = n_models + len(target.run.batch_sizes) * target.run.iterations + 2 * n_models + 1
    with progress_bar("building engines", total=steps, enabled=progress) as tick:
        if engines is None:
            engines, cache = build_engines(backend, {"dense": dense_onnx, "pruned": pruned_onnx}, target, work,
                                           engine_cache)
        else:
            cache = {k: "miss" for k in engines}
        tick(n_models)
        m = measure_pair(backend, engines, target, x, y, work, tick, metric, power_mode=power_mode())
        m.engine_cache = cache
        m.hostname = socket.gethostname()
        tick(0, "sizes, parameters, MACs")
        report = report_from_measurement(m, dense_onnx, pruned_onnx, target, method=method, sparsity=sparsity)
        if metric is not None:
            report.accuracy_metric = f"{getattr(metric, '__module__', '?')}:{getattr(metric, '__name__', '?')}"
        tick(1, "done")
    why = backend.measured_elsewhere(target)
    if why:
        report.notes.insert(0, f"Measured on this host, not on the device: {why}. The engine files in this run "
                               "are built for the device and were checked here; run `profile` on the device "
                               "for its latency and memory.")
    return report


def check_models(dense_onnx: Path, pruned_onnx: Path, target: Target) -> None:
    """Both ONNX files fit the target (the backend's validation), or one InputError naming the first problems."""
    backend = get_backend(target.backend)
    for label, path in (("dense", dense_onnx), ("pruned", pruned_onnx)):
        problems = backend.validate(path, target)
        if problems:
            more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
            raise InputError(f"{label} model {path.name} does not fit target '{target.name}': {'; '.join(problems[:2])}{more}")


def report_from_measurement(m: PairMeasurement, dense_onnx: Path, pruned_onnx: Path, target: Target, *,
                            method: str | None = None, sparsity: float | None = None,
                            host: str | None = None) -> Report:
    """The report of a measurement made here or on a board (``host`` as the user gave it, None: here)."""
    run = target.run
    int8 = "pruned_fp32" in m.engines
    latency: dict[int, BatchLatency] = {}
    rounds: dict[str, int] = {}
    for bs, times in m.times_ns.items():
        stats = [LatencyStats.from_ns(t, run.percentiles) for t in times]
        latency[bs] = BatchLatency(batch=bs, dense=stats[0], control=stats[1], pruned=stats[2],
                                   pruned_fp32=stats[3] if int8 else None,
                                   rounds_ms={"dense": round_medians(times[0]), "pruned": round_medians(times[2])})
        rounds[str(bs)] = len(times[0])
    st_d, st_p = model_stats(dense_onnx), model_stats(pruned_onnx)
    meta = read_metadata(pruned_onnx)
    dense_engine, pruned_engine, fp32_engine = m.engines["dense"], m.engines["pruned"], m.engines.get("pruned_fp32")
    mem_d, mem_p, mem_f = m.memory["dense"], m.memory["pruned"], m.memory.get("pruned_fp32")
    acc = m.accuracy
    batch_sizes = m.batch_sizes
    static = m.static_batch
    ref = 1 if 1 in latency else min(latency)
    method = method or meta.get("edgeprune.method")
    sparsity_given = sparsity if sparsity is not None else _float_or_none(meta.get("edgeprune.sparsity"))
    pruned_src, pruned_stats = pruned_onnx, st_p
    if int8:
        # The INT8 side is the quantised file: its own size; the network (params, MACs) is the pruned one.
        pruned_src = Path(pruned_engine.extra["int8_onnx"])
        raw = pruned_src.read_bytes()
        pruned_stats = replace(st_p, size_bytes=len(raw), size_xz_bytes=xz_size(raw))
    engines = {"dense": str(dense_engine.path), "pruned": str(pruned_engine.path)}
    if fp32_engine:
        engines["pruned_fp32"] = str(fp32_engine.path)
    report = Report(
        target=target.name,
        backend=target.backend,
        method=method,
        sparsity=sparsity_given if sparsity_given is not None else round(st_p.sparsity, 4),
        dense=_side(dense_onnx, dense_engine, latency[ref].dense, mem_d, acc["dense"], st_d),
        pruned=_side(pruned_src, pruned_engine, latency[ref].pruned, mem_p, acc["pruned"], pruned_stats),
        latency=latency,
        agreement=Agreement.from_dict(m.agreement) if m.agreement else None,
        latency_batch=ref,
        granularity=meta.get("edgeprune.granularity"),
        target_description=target.description,
        stack=m.stack,
        run={
            "warmup": run.warmup,
            "iterations": run.iterations,
            "min_seconds": run.min_seconds,
            "rounds": rounds,
            "batch_sizes": batch_sizes,
            "percentiles": list(run.percentiles),
            "order": "A A' B C, rotated each round" if int8 else "A A' B, rotated each round",
            "accuracy_samples": m.samples,
            "memory": {"arena": False, "batch": 1, "separate_process": True},
            "engines": engines,
        },
        precision=target.build.precision,
    )
    report.device = {"host": host, "hostname": m.hostname, "stack": stack_fingerprint(m.stack),
                     "power_mode": m.extra.get("power_mode")}
    report.engine_cache = {k: m.engine_cache[k] for k in ("dense", "pruned")}
    if target.backend == "tensorrt":
        report.engine_facts = {k: _engine_facts(m.engines[k], m.memory[k]) for k in ("dense", "pruned")}
    if m.extra.get("power"):
        report.power = m.extra["power"]
    if m.correct is not None:
        report.evaluation = {"samples": m.samples, "digest": m.eval_digest, "pruned_correct": m.correct}
    if int8:
        report.pruned_fp32 = _side(pruned_onnx, fp32_engine, latency[ref].pruned_fp32, mem_f, acc["pruned_fp32"], st_p)
        report.int8 = {**_quantization(pruned_engine), "agreement_with_fp32": m.agreement_fp32}
    report.notes = explain(report)
    report.notes += uncounted_notes({"dense": (dense_onnx, st_d), "pruned": (pruned_onnx, st_p)})
    if sparsity_given is None:
        report.notes.append(
            "The pruned model records no target sparsity, so the sparsity shown is the measured fraction of zero weights."
        )
    if static and list(run.batch_sizes) != [static]:
        report.notes.append(
            f"The model's input has a fixed batch of {static}, so latency was measured at batch {static} only "
            f"(the target asks for {', '.join(map(str, run.batch_sizes))})."
        )
    return report


def _engine_facts(engine: Engine, memory: dict) -> dict:
    from edgeprune.backends.trtexec import engine_facts

    info = engine.extra.get("layer_info")
    return engine_facts(Path(engine.path).parent / Path(info).name if info else None, memory.get("device_memory_bytes"))


def uncounted_notes(sides: dict[str, tuple[Path, ModelStats]]) -> list[str]:
    """Name each model whose MACs could not be counted: its MACs and the MAC ratio are unknown, not 0."""
    notes = []
    for label, (path, st) in sides.items():
        if st.macs is None:
            more = f" (+{len(st.uncounted) - 3} more)" if len(st.uncounted) > 3 else ""
            notes.append(f"The MACs of the {label} model {path.name} could not be counted: ONNX shape inference gave "
                         f"no shapes for {', '.join(st.uncounted[:3])}{more}; its MACs and the MAC ratio are unknown.")
    return notes


def explain(report: Report) -> list[str]:
    """Plain sentences a reader needs to interpret the numbers: where the gain is, whether a
    latency difference is real, what accuracy cost."""
    notes: list[str] = []
    d, p, q = report.dense, report.pruned, report.ratios
    runtime = _BACKEND_NAMES.get(report.backend, report.backend)
    what = "pruned INT8 model" if report.pruned_fp32 is not None else "pruned model"
    many_zeros = p.zero_fraction - d.zero_fraction >= 0.2
    if q.macs is not None and abs(q.macs - 1.0) < 0.01 and many_zeros:
        notes.append(
            f"{p.zero_fraction:.0%} of the pruned model's weights are zero, yet it executes as many MACs as the dense "
            f"model: zeros bring no speed-up on this backend ({runtime} densifies); the gain is in the compressed "
            f"file size: {format_bytes(d.size_xz_bytes)} → {format_bytes(p.size_xz_bytes)} with xz "
            f"({format_bytes(d.size_bytes)} → {format_bytes(p.size_bytes)} uncompressed)."
        )
    elif q.macs is not None and q.macs < 0.99:
        notes.append(
            f"Neurons or channels were physically removed: the pruned model executes {q.macs:.0%} of the dense "
            f"model's MACs and stores {q.params:.0%} of its nonzero parameters."
        )
    for bs in sorted(report.latency):
        bl = report.latency[bs]
        r, aa = bl.ratio_p50, bl.aa_ratio_p50
        if r is None or aa is None:
            continue
        notes += latency_notes(bs, r, aa, what)
    drop = report.accuracy_drop_pt
    if drop is not None:
        text = f"Top-1 accuracy {d.accuracy:.2f} % → {p.accuracy:.2f} % ({-drop:+.2f} points)"
        if report.agreement is not None:
            text += (
                f" on {report.agreement.samples} samples; dense and pruned pick the same class for "
                f"{report.agreement.top1:.1%} of them"
            )
        notes.append(text + ".")
    if report.pruned_fp32 is not None:
        notes += _int8_notes(report)
    if report.backend == "tensorrt":
        notes += _engine_notes(report)
    else:
        notes.append(
            "Peak memory was measured in a separate process per model with the CPU memory arena off; model RSS is "
            "the rise above that process's RSS just before the session was created."
        )
    return notes


def _engine_notes(report: Report) -> list[str]:
    """What TensorRT made of each network, and what its memory figure is."""
    f = report.engine_facts or {}
    notes = ["Latency is GPU time per execution (CUDA events around each execution); engine memory is the device "
             "memory each engine's execution context needs (TensorRT's own figure), host RSS was not measured."]
    sides = []
    for label in ("dense", "pruned"):
        e = f.get(label) or {}
        if e.get("layers") is not None:
            prec = ", ".join(f"{n} {k}" for k, n in sorted((e.get("precisions") or {}).items())) or "precisions unknown"
            sides.append(f"the {label} engine has {e['layers']} layers ({prec})")
    if sides:
        notes.append("After fusion " + " and ".join(sides) + ".")
    return notes


def _int8_notes(report: Report) -> list[str]:
    q, f, p = report.int8 or {}, report.pruned_fp32, report.pruned
    fp32_layers = q.get("fp32_compute_nodes") or []
    kept = f"compute layers kept in fp32: {', '.join(fp32_layers)}" if fp32_layers else "no compute layer kept in fp32"
    notes = [
        f"The pruned model was deployed in INT8: static {q.get('format', 'QDQ')} quantisation with "
        f"{'per-channel' if q.get('per_channel') else 'per-tensor'} weights, {q.get('calibration_method')} calibration "
        f"on {q.get('calibration_samples')} images of {Path(str(q.get('calibration'))).name}; "
        f"{q.get('quantized_nodes')} nodes run on int8 inputs, {kept}."
    ]
    ratios = [f"{bl.int8_ratio_p50:.2f} at batch {b}" for b, bl in sorted(report.latency.items())
              if bl.int8_ratio_p50 is not None]
    text = f"INT8 against the same pruned model in fp32, timed in the same loop: p50 ratio int8/fp32 {', '.join(ratios)}"
    drop = report.int8_accuracy_drop_pt
    if drop is not None:
        text += f"; top-1 {f.accuracy:.2f} % → {p.accuracy:.2f} % ({-drop:+.2f} points)"
    agree = q.get("agreement_with_fp32")
    if agree:
        text += f", same class as fp32 for {agree['top1']:.1%} of samples"
    notes.append(text + f"; file {format_bytes(f.size_bytes)} → {format_bytes(p.size_bytes)}.")
    slower = [bl for bl in report.latency.values()
              if bl.int8_ratio_p50 is not None and bl.aa_ratio_p50 is not None
              and bl.int8_ratio_p50 > 1.0 + noise_band(bl.aa_ratio_p50)]
    if slower and len(slower) == len(report.latency):
        notes.append("INT8 is slower than fp32 for this model on this target at every batch size measured: "
                     "the fp32 engine is the better deployment here.")
    return notes


def _quantization(engine: Engine) -> dict:
    """How the INT8 engine was quantised, from what the backend recorded."""
    e = engine.extra
    return {
        "format": "QDQ",
        "per_channel": e.get("per_channel") == "true",
        "calibration": e.get("calibration"),
        "calibration_method": e.get("calibration_method"),
        "calibration_samples": int(e.get("calibration_samples", 0)),
        "quantized_nodes": int(e.get("quantized_nodes", 0)),
        "fp32_compute_nodes": [n for n in e.get("fp32_compute_nodes", "").split(",") if n],
        "int8_onnx": e.get("int8_onnx"),
    }


def _side(src: Path, engine: Engine, lat: LatencyStats, mem: dict, acc: float | None, st: ModelStats) -> ModelSide:
    return ModelSide(
        path=str(src),
        sha256=file_digest(src),
        latency_ms=lat,
        peak_rss_mb=None if mem.get("peak_rss_mb") is None else float(mem["peak_rss_mb"]),
        model_rss_mb=None if mem.get("model_rss_mb") is None else float(mem["model_rss_mb"]),
        accuracy=acc,
        size_bytes=st.size_bytes,
        size_xz_bytes=st.size_xz_bytes,
        engine_bytes=Path(engine.path).stat().st_size,
        params=st.nonzero_params,
        total_params=st.params,
        macs=st.macs,
        opset=st.opset,
    )


def _check_data(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or len(x) == 0:
        raise ShapeError(f"profiling data must be a non-empty batch of rows, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ShapeError(f"labels must be one per row: x has {len(x)} rows, y has shape {y.shape}")
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = x.astype(np.float32)
    return np.ascontiguousarray(x), y.astype(np.int64)


def _float_or_none(v: str | None) -> float | None:
    try:
        return None if v is None else float(v)
    except ValueError:
        return None
