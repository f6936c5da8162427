"""Dense vs pruned through built engines: the part of a profile that runs where the engines run.

Builds the engines (through an optional engine cache), times them interleaved (A A' B, plus C for
an INT8 build), measures accuracy and agreement on the test data and peak memory in a process per
model, and returns a `PairMeasurement`: plain numbers that travel as JSON. It needs numpy and the
backend's runtime only, so the board runs this very code (`python -m edgeprune.device run`) and
this machine runs it for a local deploy; the report around it (ONNX statistics, notes) is written
on the host (`edgeprune.profiling`).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.backends.base import Engine
from edgeprune.errors import InputError
from edgeprune.fileio import file_digest
from edgeprune.measure.accuracy import agreement, predict, score
from edgeprune.measure.power import measure_power
from edgeprune.measure.timing import static_batch, tile_rows, time_interleaved

if TYPE_CHECKING:
    from edgeprune.backends.base import Backend
    from edgeprune.targets import Target

EVAL_BATCH = 256
Tick = Callable[..., None]


def _no_tick(n: int = 1, description: str | None = None) -> None:
    return None


@dataclass
class PairMeasurement:
    """What the device measured; `times_ns[batch]` = per-run times of A, A', B (and C for INT8)."""

    batch_sizes: list[int]
    static_batch: int | None
    times_ns: dict[int, list[np.ndarray]]
    accuracy: dict[str, float]
    agreement: dict[str, Any]
    agreement_fp32: dict[str, Any] | None
    memory: dict[str, dict]
    engines: dict[str, Engine]
    engine_cache: dict[str, str]
    stack: dict[str, str]
    samples: int
    hostname: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # The pruned engine's per-sample correctness (base64 of np.packbits, in sample order) and a digest
    # of the evaluation set: the paired samples a McNemar test between two runs needs.
    correct: str | None = None
    eval_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_sizes": self.batch_sizes, "static_batch": self.static_batch,
            "times_ns": {str(b): [t.tolist() for t in ts] for b, ts in self.times_ns.items()},
            "accuracy": self.accuracy, "agreement": self.agreement, "agreement_fp32": self.agreement_fp32,
            "memory": self.memory,
            "engines": {k: {"path": str(e.path), "source": str(e.source), "build_seconds": e.build_seconds,
                            "extra": e.extra, "bytes": Path(e.path).stat().st_size} for k, e in self.engines.items()},
            "engine_cache": self.engine_cache, "stack": self.stack, "samples": self.samples,
            "hostname": self.hostname, "extra": self.extra, "correct": self.correct, "eval_digest": self.eval_digest,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], backend: str, target: str) -> PairMeasurement:
        return cls(
            batch_sizes=[int(b) for b in d["batch_sizes"]], static_batch=d["static_batch"],
            times_ns={int(b): [np.asarray(t, dtype=np.int64) for t in ts] for b, ts in d["times_ns"].items()},
            accuracy=d["accuracy"], agreement=d["agreement"], agreement_fp32=d.get("agreement_fp32"),
            memory=d["memory"],
            engines={k: Engine(path=Path(e["path"]), backend=backend, target=target, source=Path(e["source"]),
                               build_seconds=float(e["build_seconds"]), extra=dict(e["extra"]))
                     for k, e in d["engines"].items()},
            engine_cache=dict(d["engine_cache"]), stack=dict(d["stack"]), samples=int(d["samples"]),
            hostname=str(d.get("hostname", "")), extra=dict(d.get("extra", {})),
            correct=d.get("correct"), eval_digest=d.get("eval_digest"),
        )


def fp32_of(target: Target) -> Target:
    """The target with an fp32 build: the dense side (and pruned C) of an INT8 run."""
    if target.build.precision == "fp32":
        return target
    return replace(target, build=replace(target.build, precision="fp32"))


def stack_fingerprint(stack: dict[str, str]) -> str:
    """A short digest of the software stack a measurement ran on (library versions, CPU, OS)."""
    return hashlib.sha256(json.dumps(stack, sort_keys=True).encode()).hexdigest()[:16]


def engine_key(onnx_path: Path, stack: dict[str, str], target: Target) -> str:
    """Names a built engine: the ONNX file's digest + the stack fingerprint + the build policy."""
    policy = json.dumps({"target": target.name, "build": target.build.to_dict()}, sort_keys=True)
    text = "\n".join((file_digest(onnx_path), stack_fingerprint(stack), policy))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def build_engines(backend: Backend, onnx: dict[str, Path], target: Target, work: Path,
                  cache: Path | None = None, quantized: dict[str, str] | None = None,
                  ) -> tuple[dict[str, Engine], dict[str, str]]:
    """Build dense and pruned (and, for INT8, the pruned model in fp32) for ``target``.

    ``onnx["pruned_int8"]``: the pruned model quantised elsewhere already (a board has no onnx to
    quantise with): the INT8 engine is built from it as it is, and ``quantized``, how it was
    quantised, is recorded on it. With ``cache``, each goes through `cached_build` under its
    `engine_key`."""
    fp32 = fp32_of(target)
    plan = {"dense": (onnx["dense"], fp32), "pruned": (onnx["pruned"], target)}
    if target.build.precision == "int8":
        plan["pruned_fp32"] = (onnx["pruned"], fp32)
        if "pruned_int8" in onnx:
            plan["pruned"] = (onnx["pruned_int8"], fp32)
    engines, status = {}, {}
    for label, (src, tgt) in plan.items():
        if cache is None:
            engines[label], status[label] = backend.build(src, tgt, work / "engines" / label.replace("_", "-")), "miss"
            continue
        engines[label], status[label] = cached_build(
            cache, engine_key(src, backend.stack(tgt), tgt), lambda folder, src=src, tgt=tgt: backend.build(src, tgt, folder),
            backend=backend.name, target=tgt.name, source=src)
    if "pruned_int8" in onnx and "pruned_fp32" in plan:
        e = engines["pruned"]
        engines["pruned"] = replace(e, extra={**e.extra, **(quantized or {}), "precision": "int8",
                                              "int8_onnx": Path(onnx["pruned_int8"]).name})
    return engines, status


def cached_build(cache: Path, key: str, build: Callable[[Path], Engine], *, backend: str, target: str,
                 source: Path) -> tuple[Engine, str]:
    """The engine in the cache slot ``cache/key``, made from ``source``: reused ("hit"), or built by
    ``build(folder)`` into a temporary folder renamed into place ("miss"), so a cut run never leaves
    half of one. The slot keeps whatever the build wrote beside the engine (TensorRT: its plan and
    layer information). Every engine cache (ONNX Runtime's `engine_key`, TensorRT's
    `backends.tensorrt.plan_key`) is this one."""
    slot = cache / key
    status = "hit" if (slot / "engine.json").is_file() else "miss"
    if status == "miss":
        tmp = cache / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            built = build(tmp)
            (tmp / "engine.json").write_text(json.dumps({"name": Path(built.path).name,
                                                         "build_seconds": built.build_seconds, "extra": built.extra}))
            try:
                os.replace(tmp, slot)
            except OSError:
                if not (slot / "engine.json").is_file():
                    raise
                # another run built the same engine meanwhile: its slot stands, this build is dropped
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    e = json.loads((slot / "engine.json").read_text())
    return Engine(path=slot / e["name"], backend=backend, target=target, source=Path(source),
                  build_seconds=float(e["build_seconds"]), extra=dict(e["extra"])), status


def measure_pair(backend: Backend, engines: dict[str, Engine], target: Target, x: np.ndarray, y: np.ndarray,
                 work: Path, tick: Tick = _no_tick, metric: Callable | None = None,
                 power_mode: str | None = None) -> PairMeasurement:
    """Time, evaluate and memory-probe built engines on the test data (x, y), and on a Jetson take each
    model's power (`edgeprune.measure.power`, in the mode ``power_mode``); see the module docstring.
    ``metric``: the task's own score (--metric) in place of top-1."""
    run = target.run
    int8 = "pruned_fp32" in engines
    tick(0, "opening sessions")
    a, a2 = backend.open(engines["dense"], target), backend.open(engines["dense"], target)
    b = backend.open(engines["pruned"], target)
    sessions = [a, a2, b] + ([backend.open(engines["pruned_fp32"], target)] if int8 else [])
    check_input(a, x)
    static = static_batch(a)
    batch_sizes = [static] if static else list(run.batch_sizes)

    times: dict[int, list[np.ndarray]] = {}
    for bs in batch_sizes:
        tick(0, f"latency, batch {bs}")
        times[bs] = time_interleaved(sessions, tile_rows(x, bs), run.warmup, run.iterations, run.min_seconds, tick)

    tick(0, "accuracy")
    eval_batch = static or min(EVAL_BATCH, len(x))
    logits = {}
    for label, s in zip(("dense", "pruned", "pruned_fp32"), (a, b, *sessions[3:])):
        logits[label] = predict(s, x, eval_batch)
        tick(1)
    del a, a2, b, sessions
    gc.collect()

    tick(0, "peak memory (own process per model)")
    work.mkdir(parents=True, exist_ok=True)
    sample = work / "memprobe_input.npy"
    np.save(sample, x[: max(1, static or 1)])
    memory = {}
    try:
        for label, engine in engines.items():
            memory[label] = measure_memory(engine, target, sample)
            tick(1)
    finally:
        sample.unlink(missing_ok=True)
    power = measure_power(backend, engines, target, x, power_mode)
    return PairMeasurement(
        batch_sizes=batch_sizes, static_batch=static, times_ns=times,
        accuracy={k: score(v, y, metric) for k, v in logits.items()},
        agreement=agreement(logits["dense"], logits["pruned"]),
        agreement_fp32=agreement(logits["pruned_fp32"], logits["pruned"]) if int8 else None,
        memory=memory, engines=engines, engine_cache={k: "miss" for k in engines},
        stack=backend.stack(target), samples=int(len(x)),
        # per-sample top-1 correctness (what McNemar pairs) only where top-1 is the score
        correct=packed_correct(logits["pruned"], y) if metric is None else None, eval_digest=eval_digest(x, y),
        extra={"power_mode": power_mode, **({"power": power} if power else {})},
    )


def packed_correct(logits: np.ndarray, y: np.ndarray) -> str:
    """Which samples the model got right (top-1), one bit each: base64 of np.packbits."""
    right = logits.reshape(len(logits), -1).argmax(axis=1) == np.asarray(y)
    return base64.b64encode(np.packbits(right).tobytes()).decode("ascii")


def eval_digest(x: np.ndarray, y: np.ndarray) -> str:
    """Names an evaluation set by its contents (shape, dtype, bytes): per-sample results compare only within one."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def measure_memory(engine: Engine, target: Target, sample_npy: Path | None = None, timeout: float = 300) -> dict:
    """Run `python -m edgeprune.memprobe` on the engine in a fresh process; return its JSON. A TensorRT
    engine's memory is on the GPU: its device memory as the engine states it, and no host RSS, which
    would measure the CUDA runtime rather than the model."""
    if target.backend == "tensorrt":
        return {"peak_rss_mb": None, "model_rss_mb": None,
                "device_memory_bytes": int(engine.extra["device_memory_bytes"])}
    if target.backend != "onnxruntime":
        raise InputError(f"peak memory is only measured for onnxruntime and tensorrt targets, not '{target.backend}'")
    cmd = [
        sys.executable, "-m", "edgeprune.memprobe", str(engine.path),
        "--threads", str(target.build.threads), "--batch", "1",
        "--build-json", json.dumps(target.build.to_dict()),
    ]
    if sample_npy is not None:
        cmd += ["--input", str(sample_npy)]
    env = dict(os.environ)
    # The probe must import this very package: installed, a checkout, or the copy pushed to a board.
    root = str(Path(__file__).resolve().parents[2])
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


def check_input(session: Any, x: np.ndarray) -> None:
    from edgeprune.errors import ShapeError

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
