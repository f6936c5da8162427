"""Dense vs pruned on one target: latency, memory, accuracy, output agreement, size.

Latency is measured with three sessions in one loop: the dense engine (A), the dense engine
opened a second time (A', an A/A control) and the pruned engine (B), in the order A A' B rotated
every round. Interleaving puts all three under the same machine noise, and the A'/A ratio shows
how big that noise is: a pruned/dense ratio inside it is not a speed-up.

Peak memory is measured in a fresh process per model (`edgeprune.memprobe`), because a process's
high-water mark only ever goes up.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeprune.backends import Engine, Session, get_backend
from edgeprune.backends.base import tile_rows
from edgeprune.errors import InputError, ShapeError
from edgeprune.fileio import file_digest
from edgeprune.onnx_stats import ModelStats, model_stats, read_metadata, xz_size
from edgeprune.progress import progress_bar
from edgeprune.report.render import format_bytes
from edgeprune.report.schema import Agreement, BatchLatency, LatencyStats, ModelSide, Report
from edgeprune.targets import Target

# The noise band around 1 is NOISE_SCALE x |A'/A - 1|, at least NOISE_FLOOR. Twice, because the
# A/A ratio is one draw of the noise and B/A is another, independent one; the floor because p50s of
# a few hundred runs do not resolve differences finer than a couple of percent even when the A/A
# control happens to land on 1.00.
NOISE_SCALE = 2.0
NOISE_FLOOR = 0.02
# An A/A ratio further than this from 1 means the machine itself was too noisy to trust.
NOISY_AA = 0.10
EVAL_BATCH = 256
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
) -> Report:
    """Build both models for `target`, measure them side by side on real data (x, y), and return
    the report (not yet written: see `edgeprune.report.write_report`)."""
    dense_onnx, pruned_onnx, work = Path(dense_onnx), Path(pruned_onnx), Path(work_dir)
    backend = get_backend(target.backend)
    for label, path in (("dense", dense_onnx), ("pruned", pruned_onnx)):
        problems = backend.validate(path, target)
        if problems:
            more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
            raise InputError(f"{label} model {path.name} does not fit target '{target.name}': {'; '.join(problems[:2])}{more}")
    x, y = _check_data(x, y)
    work.mkdir(parents=True, exist_ok=True)
    run = target.run
    # An INT8 build is measured against fp32 in the same run: dense fp32 (A, A'), pruned INT8 (B)
    # and pruned fp32 (C), so the report separates what pruning and what INT8 bought.
    int8 = target.build.precision == "int8"
    fp32_target = replace(target, build=replace(target.build, precision="fp32")) if int8 else target
    n_models = 3 if int8 else 2

    steps = n_models + len(run.batch_sizes) * run.iterations + 2 * n_models + 1
    with progress_bar("building engines", total=steps, enabled=progress) as tick:
        dense_engine = backend.build(dense_onnx, fp32_target, work / "engines" / "dense")
        pruned_engine = backend.build(pruned_onnx, target, work / "engines" / "pruned")
        fp32_engine = backend.build(pruned_onnx, fp32_target, work / "engines" / "pruned-fp32") if int8 else None
        tick(n_models, "opening sessions")
        a, a2, b = backend.open(dense_engine, target), backend.open(dense_engine, target), backend.open(pruned_engine, target)
        sessions = [a, a2, b] + ([backend.open(fp32_engine, target)] if fp32_engine else [])
        _check_input(a, x)
        static = _static_batch(a)
        batch_sizes = [static] if static else list(run.batch_sizes)

        latency: dict[int, BatchLatency] = {}
        rounds: dict[str, int] = {}
        for bs in batch_sizes:
            tick(0, f"latency, batch {bs}")
            times = time_interleaved(sessions, tile_rows(x, bs), run.warmup, run.iterations, run.min_seconds, tick)
            stats = [LatencyStats.from_ns(t, run.percentiles) for t in times]
            latency[bs] = BatchLatency(batch=bs, dense=stats[0], control=stats[1], pruned=stats[2],
                                       pruned_fp32=stats[3] if int8 else None)
            rounds[str(bs)] = len(times[0])

        tick(0, "accuracy")
        eval_batch = static or min(EVAL_BATCH, len(x))
        logits_d = predict(a, x, eval_batch)
        tick(1)
        logits_p = predict(b, x, eval_batch)
        tick(1)
        logits_f = predict(sessions[3], x, eval_batch) if int8 else None
        tick(1 if int8 else 0)
        del a, a2, b, sessions
        gc.collect()

        tick(0, "peak memory (own process per model)")
        sample = work / "memprobe_input.npy"
        np.save(sample, x[: max(1, static or 1)])
        mem_d = measure_memory(dense_engine, target, sample)
        tick(1)
        mem_p = measure_memory(pruned_engine, target, sample)
        tick(1)
        mem_f = measure_memory(fp32_engine, target, sample) if fp32_engine else None
        tick(1 if int8 else 0)
        sample.unlink(missing_ok=True)

        tick(0, "sizes, parameters, MACs")
        st_d, st_p = model_stats(dense_onnx), model_stats(pruned_onnx)
        meta = read_metadata(pruned_onnx)
        tick(1, "done")

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
        dense=_side(dense_onnx, dense_engine, latency[ref].dense, mem_d, _accuracy(logits_d, y), st_d),
        pruned=_side(pruned_src, pruned_engine, latency[ref].pruned, mem_p, _accuracy(logits_p, y), pruned_stats),
        latency=latency,
        agreement=_agreement(logits_d, logits_p),
        latency_batch=ref,
        granularity=meta.get("edgeprune.granularity"),
        target_description=target.description,
        stack=backend.stack(target),
        run={
            "warmup": run.warmup,
            "iterations": run.iterations,
            "min_seconds": run.min_seconds,
            "rounds": rounds,
            "batch_sizes": batch_sizes,
            "percentiles": list(run.percentiles),
            "order": "A A' B C, rotated each round" if int8 else "A A' B, rotated each round",
            "accuracy_samples": int(len(x)),
            "memory": {"arena": False, "batch": 1, "separate_process": True},
            "engines": engines,
        },
        precision=target.build.precision,
    )
    if int8:
        report.pruned_fp32 = _side(pruned_onnx, fp32_engine, latency[ref].pruned_fp32, mem_f, _accuracy(logits_f, y), st_p)
        report.int8 = {**_quantization(pruned_engine), "agreement_with_fp32": _agreement(logits_f, logits_p).to_dict()}
    report.notes = explain(report)
    if target.backend == "onnxruntime":
        from .backends.onnxruntime import foreign_arch

        why = foreign_arch(target)
        if why:
            report.notes.insert(0, f"Measured on this host, not on the device: {why}. The engine files in this run "
                                   "are built for the device and were checked here; run `profile` on the device "
                                   "for its latency and memory.")
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
        band = noise_band(aa)
        if abs(r - 1.0) <= band:
            notes.append(
                f"Batch {bs}: the pruned/dense p50 ratio {r:.2f} lies within the A/A noise band (dense vs itself "
                f"{aa:.2f}, band ±{band:.0%}): no measurable latency difference."
            )
        elif r < 1.0:
            notes.append(
                f"Batch {bs}: the {what} is {1 / r:.2f}× as fast as the dense one at p50 "
                f"(ratio {r:.2f}; A/A control {aa:.2f})."
            )
        else:
            notes.append(
                f"Batch {bs}: the {what} is slower than the dense one at p50 (ratio {r:.2f}; A/A control {aa:.2f})."
            )
        if abs(aa - 1.0) > NOISY_AA:
            notes.append(
                f"Batch {bs}: the dense model timed against itself differs by {abs(aa - 1.0):.0%}: the machine was "
                f"noisy; repeat the run or raise run.iterations before trusting small ratios."
            )
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
    notes.append(
        "Peak memory was measured in a separate process per model with the CPU memory arena off; model RSS is the "
        "rise above that process's RSS just before the session was created."
    )
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


def noise_band(aa_ratio: float) -> float:
    """Half-width of the band around 1 inside which a pruned/dense ratio is noise."""
    return max(NOISE_SCALE * abs(aa_ratio - 1.0), NOISE_FLOOR)


def time_interleaved(
    sessions: list[Session],
    xb: np.ndarray,
    warmup: int,
    iterations: int,
    min_seconds: float = 0.0,
    tick: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Per-run wall times (ns) of each session, timed in rotating order within one loop."""
    n = len(sessions)
    orders = [tuple((r + i) % n for i in range(n)) for r in range(n)]
    for r in range(warmup):
        for i in orders[r % n]:
            sessions[i].run(xb)
    times: list[list[int]] = [[] for _ in sessions]
    clock = time.perf_counter_ns
    # A collection pause inside a timed run would land on whichever model happened to be running.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter() + min_seconds
        r = 0
        while r < iterations or time.perf_counter() < deadline:
            for i in orders[r % n]:
                t0 = clock()
                sessions[i].run(xb)
                times[i].append(clock() - t0)
            r += 1
            if tick is not None and r % 10 == 0 and r <= iterations:
                tick(10)
        if tick is not None and iterations % 10:
            tick(iterations % 10)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [np.asarray(t, dtype=np.int64) for t in times]


def predict(session: Session, x: np.ndarray, batch: int) -> np.ndarray:
    """First output for every row of x, in batches of `batch` (the last one padded if needed)."""
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch and _static_batch(session):
            chunk = tile_rows(chunk, batch)
        outs.append(np.asarray(session.run(np.ascontiguousarray(chunk)))[:n])
    return np.concatenate(outs)


def measure_memory(engine: Engine, target: Target, sample_npy: Path | None = None, timeout: float = 300) -> dict:
    """Run `python -m edgeprune.memprobe` on the engine in a fresh process; return its JSON."""
    if target.backend != "onnxruntime":
        raise InputError(f"peak memory is only measured for onnxruntime targets so far, not '{target.backend}'")
    cmd = [
        sys.executable, "-m", "edgeprune.memprobe", str(engine.path),
        "--threads", str(target.build.threads), "--batch", "1",
        "--build-json", json.dumps(target.build.to_dict()),
    ]
    if sample_npy is not None:
        cmd += ["--input", str(sample_npy)]
    env = dict(os.environ)
    # The probe must import this very package, installed or not.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed (exit {proc.returncode}): {tail}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise InputError(f"memory probe: {result['error']}")
    return result


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
        peak_rss_mb=float(mem["peak_rss_mb"]),
        model_rss_mb=float(mem["model_rss_mb"]),
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


def _check_input(session: Session, x: np.ndarray) -> None:
    shape = getattr(session, "input_shape", None)
    if shape is None:
        return
    want = list(shape[1:])
    got = list(x.shape[1:])
    fits = len(want) == len(got) and all(not isinstance(w, int) or w == g for w, g in zip(want, got))
    if not fits:
        raise ShapeError(
            f"data rows have shape {tuple(got)} but the model input '{session.input_name}' expects {list(shape)}"
        )


def _static_batch(session: Session) -> int | None:
    shape = getattr(session, "input_shape", None)
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return int(shape[0])
    return None


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    pred = logits.reshape(len(logits), -1).argmax(axis=1)
    return float(100.0 * np.mean(pred == y))


def _agreement(ld: np.ndarray, lp: np.ndarray) -> Agreement:
    d, p = ld.reshape(len(ld), -1).astype(np.float64), lp.reshape(len(lp), -1).astype(np.float64)
    norms = np.linalg.norm(d, axis=1) * np.linalg.norm(p, axis=1)
    cos = np.sum(d * p, axis=1) / np.where(norms > 0, norms, 1.0)
    return Agreement(
        top1=float(np.mean(d.argmax(axis=1) == p.argmax(axis=1))),
        max_abs_logit_diff=float(np.max(np.abs(d - p))),
        samples=int(len(d)),
        cosine=float(np.mean(cos)),
    )


def _float_or_none(v: str | None) -> float | None:
    try:
        return None if v is None else float(v)
    except ValueError:
        return None
