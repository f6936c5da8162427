"""Build and measure a job on the board (see `edgeprune.device.job`), resuming what is done.

`build` checks the board's stack against the target, then builds both engines through the engine
cache (`edgeprune.measure.pair.cached_build`: ONNX Runtime's through `build_engines`, TensorRT's
plans through `backends.tensorrt.build_plans_cached`) and writes `built.json`; `run` measures them and
writes `result.json`. A repeated `run` whose result is there returns it; one started while an
earlier run of the same job still measures (its connection was cut, the process lives on) waits for
it on a lock instead of measuring beside it.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from edgeprune.backends.base import Engine, get_backend
from edgeprune.device.job import BUILT, JOB, RESULT, target_of
from edgeprune.errors import InputError
from edgeprune.fileio import atomic_write, link_or_copy


def _load(job_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((job_dir / JOB).read_text())
    except FileNotFoundError:
        raise InputError(f"no job in {job_dir} (push it first)") from None


def build(job_dir: Path, cache: Path) -> dict[str, Any]:
    built = job_dir / BUILT
    if built.is_file():
        done = json.loads(built.read_text())
        if all((job_dir / e["path"]).is_file() for e in done["engines"].values()):
            return {"ok": "built", "engine_cache": done["engine_cache"], "resumed": True}
    job = _load(job_dir)
    target = target_of(job)
    backend = get_backend(target.backend)
    problems = backend.host_problems(target)
    if problems:
        raise InputError(f"the board's stack does not match target {target.name}: {problems[0]}")
    cache.mkdir(parents=True, exist_ok=True)
    if "plans" in job:
        # TensorRT: planned on the host; built here, where the GPU is
        from edgeprune.backends.tensorrt import build_plans_cached

        engines, status = build_plans_cached(job["plans"], job_dir, target, cache)
    else:
        from edgeprune.measure.pair import build_engines

        engines, status = build_engines(backend, {k: job_dir / v for k, v in job["models"].items()}, target,
                                        job_dir, cache, quantized=job.get("int8"))
    record = {}
    for label, e in engines.items():
        # The job's own copy (a hard link where the file system allows): pulled with the result, with
        # the files an engine names beside it (TensorRT: its plan and layer information).
        local = job_dir / "engines" / label / Path(e.path).name
        local.parent.mkdir(parents=True, exist_ok=True)
        beside = [Path(e.path).parent / Path(e.extra[k]).name for k in ("plan", "layer_info") if e.extra.get(k)]
        for src in [Path(e.path), *beside]:
            link_or_copy(src, local.parent / src.name)
        record[label] = {"path": str(local.relative_to(job_dir)), "source": Path(e.source).name,
                         "build_seconds": e.build_seconds, "extra": e.extra}
    atomic_write(built, json.dumps({"engines": record, "engine_cache": status}).encode(), force=True)
    return {"ok": "built", "engine_cache": status, "resumed": False}


def run(job_dir: Path, cache: Path) -> dict[str, Any]:
    result = job_dir / RESULT
    if result.is_file():
        return {"ok": "measured", "resumed": True}
    with open(job_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.is_file():
            return {"ok": "measured", "resumed": True}
        return _measure(job_dir, cache)


def _measure(job_dir: Path, cache: Path) -> dict[str, Any]:
    import numpy as np

    from edgeprune.device.probe import probe
    from edgeprune.measure.pair import measure_pair

    build(job_dir, cache)
    job = _load(job_dir)
    target = target_of(job)
    backend = get_backend(target.backend)
    done = json.loads((job_dir / BUILT).read_text())
    engines = {label: Engine(path=job_dir / e["path"], backend=backend.name, target=target.name,
                             source=job_dir / e["source"],
                             build_seconds=float(e["build_seconds"]), extra=dict(e["extra"]))
               for label, e in done["engines"].items()}
    x, y = np.load(job_dir / job["data"]["x"]), np.load(job_dir / job["data"]["y"])
    board = probe()
    m = measure_pair(backend, engines, target, x, y, job_dir, power_mode=board["power_mode"])
    m.engine_cache = done["engine_cache"]
    m.hostname = board["hostname"]
    m.extra["probe"] = board
    d = m.to_dict()
    # Paths relative to the job folder: the host pulls the folder's files into its run directory.
    for e in d["engines"].values():
        e["path"] = str(Path(e["path"]).relative_to(job_dir))
        e["source"] = str(Path(e["source"]).relative_to(job_dir))
    atomic_write(job_dir / RESULT, json.dumps(d).encode(), force=True)
    return {"ok": "measured", "resumed": False}
