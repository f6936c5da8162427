"""`deploy --host`: export here, build and measure on the board over SSH, report here.

What travels (one tar stream over the shared connection): the device-side package
(`edgeprune.device.DEVICE_FILES`, into `WORKDIR/pkg/<digest>/`), and the job (`WORKDIR/jobs/<key>/`:
job.json, dense.onnx, pruned.onnx, x.npy, y.npy). The board builds both engines through its engine
cache (`WORKDIR/engines/`), measures, and the result and the engines come back into the run
directory, where the report is written exactly as a local run writes it.

Each finished stage (exported, pushed, built, measured, pulled) is recorded in `RUN/stages.json`
with a key of the run's inputs; the same command repeated after a fault starts at the first
unfinished stage.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.device import device_files
from edgeprune.device.job import BUILT, DATA, JOB, RESULT, job_dict
from edgeprune.errors import RemoteError
from edgeprune.fileio import atomic_write
from edgeprune.run.ssh import SSHHost, remote_path
from edgeprune.versions import version_in_range

if TYPE_CHECKING:
    from edgeprune.report.schema import Report
    from edgeprune.targets import Target

STAGES = ("exported", "pushed", "built", "measured", "pulled", "reported")
STAGES_FILE = "stages.json"
_ARCH = {"arm64": "aarch64", "amd64": "x86_64"}


@dataclass
class Board:
    """Where and how: the host as the user gave it, their ssh config, the board's python and workdir."""

    host: str
    ssh_config: str | Path | None = None
    python: str = "python3"
    workdir: str = "~/.cache/edgeprune"

    def connect(self) -> SSHHost:
        return SSHHost(self.host, ssh_config=self.ssh_config)


@dataclass
class RunStages:
    """`RUN/stages.json`: the stages of a remote deploy that are done, for the inputs named by `key`."""

    run_dir: Path
    key: str
    done: list[str] = field(default_factory=list)
    resumed: bool = False
    # The job's folder name on the board: new for every run, kept by a resumed one.
    job: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    times: dict[str, float] = field(default_factory=dict)   # when each stage finished (Unix time)

    @classmethod
    def resume(cls, run_dir: Path, key: str) -> RunStages | None:
        """The unfinished run of the same inputs in ``run_dir``, or None (start afresh)."""
        try:
            rec = json.loads((Path(run_dir) / STAGES_FILE).read_text())
        except (OSError, ValueError):
            return None
        if rec.get("key") != key or "reported" in rec.get("done", []):
            return None
        return cls(Path(run_dir), key, list(rec["done"]), resumed=True, job=str(rec["job"]),
                   times=dict(rec.get("times", {})))

    def __contains__(self, stage: str) -> bool:
        return stage in self.done

    def mark(self, stage: str) -> None:
        if stage not in self.done:
            self.done.append(stage)
            self.times[stage] = time.time()
        atomic_write(self.run_dir / STAGES_FILE, json.dumps(
            {"key": self.key, "job": self.job, "done": self.done, "times": self.times,
             "stages": list(STAGES)}, indent=1).encode(), force=True)


def run_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _package_digest(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name, path in sorted(files.items()):
        h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _device_command(board: Board, pkg: str, args: str) -> str:
    wd = remote_path(board.workdir)
    py = remote_path(board.python) if board.python.startswith("~") else shlex.quote(board.python)
    return f"cd {wd} && PYTHONPATH=\"$PWD/pkg/{pkg}\" exec {py} -m edgeprune.device {args}"


def _call_device(ssh: SSHHost, board: Board, command: str) -> dict[str, Any]:
    """Run the device side; its JSON line, or one RemoteError line saying what went wrong there."""
    p = ssh.run(command, check=False)
    lines = [ln for ln in p.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1]) if lines else None
    if p.returncode == 0 and out is not None:
        return out
    if out is not None and "error" in out:
        if "No space left on device" in out["error"]:
            raise RemoteError(f"the disk on {ssh.host} is full ({out['error']})")
        raise RemoteError(f"on {ssh.host}: {out['error']}")
    if p.returncode in (126, 127):
        raise RemoteError(f"on {ssh.host}: python '{board.python}' cannot be run there (--device-python)")
    raise ssh.command_fault(command.split(" exec ", 1)[-1], p)


def _push(ssh: SSHHost, board: Board, pkg_files: dict[str, Path], pkg: str, job: str,
          onnx: dict[str, Path], target: Target, x: np.ndarray, y: np.ndarray, run_dir: Path,
          plans: dict[str, dict] | None) -> None:
    onnx, int8, more = dict(onnx), None, {}
    if plans is not None:
        # TensorRT: the ONNX each plan parses (densified; Q/DQ on 11) and its calibration inputs, from the run
        onnx = {label: run_dir / p["onnx"] for label, p in plans.items()}
        more = {p["calibration"]["inputs"]: run_dir / p["calibration"]["inputs"]
                for p in plans.values() if p.get("calibration")}
    elif target.build.precision == "int8":
        # quantised here as a local INT8 deploy quantises (the board has no onnx); the board builds it as it is
        from edgeprune.backends.onnxruntime import OnnxRuntimeBackend

        path, int8 = OnnxRuntimeBackend().quantize(onnx["pruned"], target, run_dir)
        onnx["pruned_int8"] = path
    spec = job_dict(target, int8, plans)
    with tempfile.TemporaryDirectory(prefix="ep-job-") as tmp:
        t = Path(tmp)
        (t / JOB).write_text(json.dumps(spec, indent=1))
        np.save(t / DATA["x"], np.ascontiguousarray(x, dtype=np.float32))
        np.save(t / DATA["y"], np.asarray(y, dtype=np.int64))
        files = {f"pkg/{pkg}/{name}": path for name, path in pkg_files.items()}
        files.update({f"jobs/{job}/{name}": onnx[k] for k, name in spec["models"].items()})
        files.update({f"jobs/{job}/{name}": path for name, path in more.items()})
        files.update({f"jobs/{job}/{name}": t / name for name in (JOB, DATA["x"], DATA["y"])})
        ssh.push(files, board.workdir)


def deploy_remote(onnx: dict[str, Path], target: Target, x: np.ndarray, y: np.ndarray, run_dir: Path,
                  stages: RunStages, board: Board, *, method: str | None, sparsity: float | None,
                  plans: dict[str, dict] | None = None) -> Report:
    """Push, build and measure on ``board``, pull, and write the report into ``run_dir``. ``plans``:
    a TensorRT target's engine plans (`trt_deploy.prepare_tensorrt`), which the board builds."""
    from edgeprune.profiling import report_from_measurement
    from edgeprune.run.collect import read_result
    from edgeprune.report.write import write_report

    pkg_files = device_files()
    pkg, job = _package_digest(pkg_files), stages.job
    job_dir = f"{board.workdir.rstrip('/')}/jobs/{job}"
    with board.connect() as ssh:
        if "pulled" not in stages:
            pushed = "pushed" in stages and ssh.run(
                f"test -f {remote_path(job_dir)}/{JOB} && test -d {remote_path(board.workdir)}/pkg/{pkg}",
                check=False).returncode == 0
            if not pushed:
                _push(ssh, board, pkg_files, pkg, job, onnx, target, x, y, run_dir, plans)
                stages.mark("pushed")
            if "built" not in stages:
                _call_device(ssh, board, _device_command(board, pkg, f"build jobs/{job}"))
                stages.mark("built")
            if "measured" not in stages:
                _call_device(ssh, board, _device_command(board, pkg, f"run jobs/{job}"))
                stages.mark("measured")
            ssh.pull(job_dir, [RESULT, BUILT, JOB, "engines"], run_dir)   # job.json: `collect` reads the run too
            stages.mark("pulled")
            # The job's inputs and outputs are here now; the board keeps only its engine cache.
            ssh.run(f"rm -rf {remote_path(job_dir)}", check=False)
    m = read_result(run_dir, target)
    report = report_from_measurement(m, onnx["dense"], onnx["pruned"], target, method=method, sparsity=sparsity,
                                     host=board.host)
    report.notes.insert(0, f"Measured on {m.hostname} (reached as {board.host} over SSH); engines built there, "
                           f"{_cache_words(m.engine_cache)}.")
    write_report(report, run_dir)
    stages.mark("reported")
    return report


def _cache_words(cache: dict[str, str]) -> str:
    hits = [k for k in ("dense", "pruned") if cache.get(k) == "hit"]
    if len(hits) == 2:
        return "both reused from the board's engine cache"
    if hits:
        return f"the {hits[0]} one reused from the board's engine cache"
    return "none found in its engine cache"


# ---------------------------------------------------------------- probe
def probe_board(board: Board) -> dict[str, Any]:
    """The board's stack (`python -m edgeprune.device probe`), the device package pushed first."""
    pkg_files = device_files()
    pkg = _package_digest(pkg_files)
    with board.connect() as ssh:
        if ssh.run(f"test -d {remote_path(board.workdir)}/pkg/{pkg}", check=False).returncode != 0:
            ssh.push({f"pkg/{pkg}/{n}": p for n, p in pkg_files.items()}, board.workdir)
        return _call_device(ssh, board, _device_command(board, pkg, "probe"))


def matching_targets(probe: dict[str, Any], targets: list[Target]) -> list[str]:
    """Names of the targets whose stack and hardware the probed board has."""
    return [t.name for t in targets if not target_mismatch(probe, t)]


def target_mismatch(probe: dict[str, Any], t: Target) -> str | None:
    """Why the probed board is not target ``t`` (None: it matches)."""
    machine = _ARCH.get(str(probe.get("machine", "")).lower(), str(probe.get("machine", "")).lower())
    arch = t.hardware.get("arch")
    if arch and arch != machine:
        return f"the board is {machine}, the target {arch}"
    if t.backend == "onnxruntime":
        ort = probe.get("onnxruntime")
        if not ort:
            return "no onnxruntime on the board"
        wanted = t.stack.get("onnxruntime")
        if wanted and not version_in_range(ort["version"], wanted):
            return f"onnxruntime {ort['version']} is outside '{wanted}'"
        missing = [p for p in t.build.execution_providers if p not in ort["providers"]]
        if missing:
            return f"execution provider {missing[0]} is not available"
    else:
        trt = probe.get("tensorrt")
        if not trt:
            return "no TensorRT on the board"
        want = t.stack.get("tensorrt", "")
        if want and trt.split(".")[:2] != want.split(".")[:2]:
            return f"TensorRT {trt}, the target {want}"
    l4t = t.stack.get("l4t")
    if l4t and not str(probe.get("l4t") or "").startswith(str(l4t)):
        return f"L4T {probe.get('l4t')}, the target {l4t}"
    return None
