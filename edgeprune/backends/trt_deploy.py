"""`deploy` for a TensorRT target: everything the device needs, prepared on this machine.

From the exported dense and pruned ONNX files in the run directory this writes:

* the ONNX files TensorRT will parse (sparse initializers densified; for INT8 on TensorRT 11 the
  Q/DQ ONNX quantised here with ONNX Runtime, since 11 has no calibrators);
* `calibration_inputs.npy` (INT8): the calibration images as the network sees them;
* `engine_plan.json`: one EnginePlan per model, the exact trtexec commands and the notes;
* `trtexec_build.sh` and `trtexec_bench.sh`: build, then benchmark, on the device.

Where TensorRT can run here (`TensorRTBackend.host_problems` empty), `tensorrt.build_plans` builds both
plans through the Python API and `deploy` measures them in the one pipeline every backend uses
(`edgeprune.profiling.profile_pair`), writing the same report; elsewhere deploy returns this
module's `BoardRun`: run the scripts on the board, then `edgeprune collect RUN`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.backends.base import get_backend
from edgeprune.backends.trt_plan import CALIBRATION_INPUTS, PLAN_SCHEMA, onnx_facts, plan_engine
from edgeprune.backends.trtexec import bench_command, bench_script, build_command, build_script
from edgeprune.device.job import job_dict
from edgeprune.errors import InputError
from edgeprune.fileio import atomic_write

if TYPE_CHECKING:
    from edgeprune.targets import Target

@dataclass
class BoardRun:
    """A TensorRT deploy that could not be measured here: the run directory holds the plans and the
    scripts; run them on the board, copy the directory back, then `edgeprune collect RUN`."""

    run_dir: str
    target: str
    tensorrt: str
    generation: str
    precision: str
    files: list[str]
    commands: dict[str, str]
    notes: list[str]
    plans: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_tensorrt(onnx_files: dict[str, Path], target: Target, run_dir: Path, *,
                     calibration: str | None = None) -> BoardRun:
    """Prepare `onnx_files` ({"dense": path, "pruned": path}, already in `run_dir`) for `target`: the
    checked plans, the scripts and the calibration inputs; `BoardRun.plans` are what
    `tensorrt.build_plans` builds where TensorRT is."""
    run_dir = Path(run_dir)
    backend = get_backend(target.backend)
    for path in onnx_files.values():
        _densify(path)
    facts = {label: onnx_facts(path) for label, path in onnx_files.items()}
    x_cal = None
    if target.build.precision == "int8":
        x_cal = _calibration_inputs(calibration or target.build.calibration, calibration is not None,
                                    facts["pruned"].input_dims[1:])
        atomic_write(run_dir / CALIBRATION_INPUTS, lambda f: np.save(f, x_cal), force=True)
    plans = {label: plan_engine(target, facts[label], model=label, onnx_file=path.name, calibration=calibration,
                                calibration_samples=0 if x_cal is None else len(x_cal))
             for label, path in onnx_files.items()}
    for label, plan in plans.items():
        if plan.int8_mode == "qdq":
            _quantize(onnx_files[label], run_dir / plan.onnx, x_cal, target.build.calibration_method)
    # checked as built: on TensorRT 11 that is the Q/DQ model quantized just above, not the fp32 export
    for label, plan in plans.items():
        path = run_dir / plan.onnx
        problems = backend.validate(path, target)
        if problems:
            more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
            raise InputError(f"{label} model {path.name} does not fit target '{target.name}': "
                             f"{'; '.join(problems[:2])}{more}")

    plan_list = list(plans.values())
    needs_python = any(p.int8_mode == "calibrator" for p in plan_list)
    commands = {f"{p.model}.build": shlex.join(build_command(p)) for p in plan_list}
    for batch in plan_list[0].batch_sizes:
        commands.update({f"{p.model}.bench.b{batch}": shlex.join(bench_command(p, batch)) for p in plan_list})
        commands[f"dense.bench.b{batch}.control"] = shlex.join(bench_command(plans["dense"], batch, control=True))
    first = plan_list[0]
    notes = list(dict.fromkeys(n for p in plan_list for n in p.notes))

    device = f"{target.hardware.get('module', target.name)}, TensorRT {first.tensorrt}"
    if needs_python:
        notes.append("INT8 calibration on TensorRT <= 10 needs real images, which trtexec cannot read: "
                     "trtexec_build.sh first builds through `python3 -m edgeprune.backends.tensorrt` "
                     "(edgeprune and cuda-python on the device) to write the calibration cache trtexec then uses.")
    cannot = get_backend("tensorrt").host_problems(target)
    if cannot:
        notes.append(f"{cannot[0]}: the engines must be built on the device ({device}): copy {run_dir} there, run "
                     f"`bash trtexec_build.sh && bash trtexec_bench.sh`, copy it back, then `edgeprune collect {run_dir}`.")

    doc = {"schema": PLAN_SCHEMA, "target": target.name, "tensorrt": first.tensorrt, "generation": first.generation,
           "models": {k: p.to_dict() for k, p in plans.items()}, "commands": commands, "notes": notes,
           "target_spec": job_dict(target)["target"]}   # what `collect` reads the run back with
    atomic_write(run_dir / "engine_plan.json", json.dumps(doc, indent=2).encode(), force=True)
    for name, text in (("trtexec_build.sh", build_script(plan_list, needs_python)),
                       ("trtexec_bench.sh", bench_script(plan_list))):
        atomic_write(run_dir / name, text.encode(), force=True)
        os.chmod(run_dir / name, 0o755)
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    return BoardRun(run_dir=str(run_dir), target=target.name, tensorrt=first.tensorrt, generation=first.generation,
                    precision=first.precision, files=files, commands=commands, notes=notes,
                    plans={k: p.to_dict() for k, p in plans.items()})


def _densify(path: Path) -> None:
    """TensorRT's ONNX parser reads `graph.initializer` only (DEPLOY §5.3): rewrite sparse ones dense."""
    if not onnx_facts(path).sparse_initializers:
        return
    import onnx

    from edgeprune.validation import densify_sparse_initializers

    dense = densify_sparse_initializers(onnx.load(str(path)))
    atomic_write(path, dense.SerializeToString(), force=True)


def _calibration_inputs(source: str, given: bool, sample_dims: tuple) -> np.ndarray:
    """The calibration images (float32 N x C x H x W, preprocessed as the data loader does)."""
    from edgeprune.quantize import calibration_path, load_calibration

    if not source:
        raise InputError("precision int8 needs calibration data: pass --calibration FILE.npz")
    # a target's build.calibration may name a shipped file; --calibration is taken as given
    path = Path(source) if given else calibration_path(source)
    x = load_calibration(path)
    if tuple(x.shape[1:]) != tuple(sample_dims):
        raise InputError(f"calibration images in {path} have shape {tuple(x.shape[1:])}; the model takes "
                         f"{tuple(sample_dims)}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _quantize(src: Path, dst: Path, x: np.ndarray, method: str) -> None:
    from edgeprune.quantize import TENSORRT, quantize_qdq

    quantize_qdq(src, dst, x, method=method, per_channel=True, **TENSORRT)
