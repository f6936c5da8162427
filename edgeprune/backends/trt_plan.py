"""What a TensorRT engine build needs, decided on the build host: the `EnginePlan`.

A TensorRT engine can only be built on the device it runs on (the Builder needs a CUDA device,
and a plan is tied to the GPU model and the TensorRT version), so edgeprune splits the work: the
plan is computed here from the target file and the ONNX file, as JSON; the device (or this
machine, when it has TensorRT) builds exactly that plan, through the Python API
(`edgeprune.backends.tensorrt`) or through `trtexec` (`edgeprune.backends.trtexec`).

TensorRT's API comes in three generations that matter for edge devices (DEPLOY.md §1.1):
"8.2" (JetPack 4.6: Nano, TX2; `max_workspace_size`, bindings), "8.5-10" (JetPack 5/6: Xavier,
Orin; memory pools, name-based I/O, FP16/INT8 builder flags and calibrators) and "11" (strongly
typed networks only: reduced precision must be in the ONNX, INT8 as Q/DQ nodes).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import InputError
from edgeprune.backends.trt_versions import trt_generation
from edgeprune.versions import version_tuple

if TYPE_CHECKING:
    from edgeprune.targets import Target

# Jetson clocks ramp up under load (DVFS); trtexec's default 200 ms warm-up is too short there.
TRTEXEC_WARMUP_MS = 2000
# Calibration batches fed to TensorRT's calibrator; the cache is what the device keeps.
CALIBRATION_BATCH = 32
CALIBRATION_INPUTS = "calibration_inputs.npy"
PLAN_SCHEMA = "edgeprune.engine_plan/1"
# TensorRT's implicit-quantisation calibrators, by the build policy's method names.
TRT_CALIBRATORS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


@dataclass(frozen=True)
class OnnxFacts:
    """What the plan needs from an ONNX file: the (first) input and how it was exported."""

    input_name: str
    input_dims: tuple[int | None, ...]   # None = a dynamic dimension (dim_param or unset)
    opset: int
    sparse_initializers: int              # TensorRT's parser ignores these: densify first
    qdq_nodes: int                        # QuantizeLinear/DequantizeLinear nodes (explicit INT8)


def onnx_facts(path: str | Path) -> OnnxFacts:
    """Read the input name/shape, opset, sparse initializers and Q/DQ nodes of an ONNX file."""
    from edgeprune.onnx_stats import _load, opset_of

    model = _load(Path(path), external=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise InputError(f"{path}: the model has no input")
    inp = inputs[0]
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in inp.type.tensor_type.shape.dim)
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return OnnxFacts(inp.name, dims, opset_of(model), len(model.graph.sparse_initializer), qdq)


@dataclass
class CalibrationPlan:
    """INT8 calibration inputs: `inputs` is a float32 N x C x H x W .npy in the run directory.

    TensorRT <= 10 calibrates while building (`calibrator` names the class) and keeps the scales
    in `cache`; TensorRT 11 has no calibrators, so the scales are baked into a Q/DQ ONNX here.
    """

    inputs: str
    source: str
    samples: int
    method: str
    batch_size: int
    cache: str = ""
    calibrator: str = ""


@dataclass
class EnginePlan:
    """One engine build for one model on one target, JSON-able (`to_dict`/`from_dict`).

    File names are relative to the run directory, which is what gets copied to the device.
    """

    model: str                           # "dense" or "pruned"
    target: str
    tensorrt: str                        # the device's TensorRT version
    generation: str                      # "8.2" | "8.5-10" | "11"
    onnx: str                            # the ONNX the device parses (the Q/DQ one for INT8 on 11.x)
    engine: str
    precision: str                       # fp32 | fp16 | int8
    int8_mode: str                       # "" | "calibrator" (<= 10.x) | "qdq" (11.x)
    strongly_typed: bool
    explicit_batch: bool                 # NetworkDefinitionCreationFlag.EXPLICIT_BATCH (8.x only)
    builder_flags: list[str]             # trt.BuilderFlag member names to set
    workspace_mb: int
    sparsity: str                        # "none" | "2:4"
    dla_core: int                        # -1 = GPU
    gpu_fallback: bool
    timing_cache: str                    # "" = none
    input_name: str
    input_shape: list[int]               # one sample, without the batch dimension
    dynamic_batch: bool
    profile: dict[str, list[int]]        # "min"/"opt"/"max" full shapes (batch first)
    batch_sizes: list[int]               # benchmarked batch sizes
    iterations: int
    duration_s: int
    warmup_ms: int
    percentiles: list[float]
    calibration: CalibrationPlan | None = None
    build_log: str = ""
    layer_info: str = ""
    notes: list[str] = field(default_factory=list)

    def shape(self, batch: int) -> list[int]:
        return [batch, *self.input_shape]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnginePlan:
        d = dict(d)
        cal = d.get("calibration")
        d["calibration"] = CalibrationPlan(**cal) if cal else None
        try:
            return cls(**d)
        except TypeError as e:
            raise InputError(f"not an edgeprune engine plan: {e}") from None


def plan_problems(target: Target, facts: OnnxFacts | None = None, *, calibration: str | None = None) -> list[str]:
    """Why `target`'s build policy cannot be built as asked, one line each (empty = fine).

    Pure: version and device facts from DEPLOY.md §1, §3 and §4, checked on the build host.
    """
    version = target.stack.get("tensorrt")
    if not version:
        return [f"target {target.name} names no TensorRT version: set stack.tensorrt (e.g. \"10.3\")"]
    try:
        gen = trt_generation(version)
    except InputError as e:
        return [str(e)]
    b, problems = target.build, []
    if b.precision == "fp16" and gen == "11":
        problems.append("precision fp16 on TensorRT 11 needs an FP16 ONNX (networks are strongly typed; ModelOpt "
                        "AutoCast writes one), which edgeprune does not produce: use fp32 or int8 (Q/DQ)")
    if b.precision == "int8":
        if not (calibration if calibration is not None else b.calibration):
            problems.append("precision int8 needs calibration data: pass --calibration calibration/fmnist.npz "
                            "or set build.calibration in the target")
        if gen != "11" and b.calibration_method not in TRT_CALIBRATORS:
            problems.append(f"calibration_method '{b.calibration_method}' has no TensorRT {version} calibrator "
                            f"(TensorRT <= 10 offers {', '.join(TRT_CALIBRATORS)})")
    if b.dla_core >= 0:
        problems += _dla_problems(target, version, gen)
    if facts is not None:
        if any(d is None for d in facts.input_dims[1:]):
            problems.append(f"input '{facts.input_name}' has dynamic dimensions besides the batch: "
                            f"{list(facts.input_dims)}; edgeprune builds one profile over the batch only")
        if facts.qdq_nodes and b.precision != "int8":
            problems.append(f"the model already holds {facts.qdq_nodes} Q/DQ nodes: build it with precision int8")
    return problems


def _dla_problems(target: Target, version: str, gen: str) -> list[str]:
    b, out = target.build, []
    cores = target.hardware.get("dla_cores")
    if cores is not None and b.dla_core >= cores:
        out.append(f"build.dla_core {b.dla_core} does not exist: {target.hardware.get('module', target.name)} "
                   f"has {cores} DLA core(s)")
    if b.precision == "fp32":
        out.append("DLA runs FP16 and INT8 only: set build.precision to fp16 or int8 (or dla_core = -1)")
    v = version_tuple(version)
    if gen == "11" and v < (11, 4, 1):
        out.append(f"TensorRT {version} has no DLA support (DLA is back from 11.4.1, on AGX Orin only)")
    elif v[:1] == (10,) and v >= (10, 8):
        out.append(f"TensorRT {version} has no DLA support (10.7 was the last 10.x release with DLA)")
    return out


def plan_engine(target: Target, facts: OnnxFacts, *, model: str, onnx_file: str,
                calibration: str | None = None, calibration_samples: int = 0) -> EnginePlan:
    """The build plan for `onnx_file` (a name in the run directory) on `target`.

    `calibration` overrides `target.build.calibration`; `calibration_samples` is how many
    images the calibration .npy holds. Raises InputError with the first of `plan_problems`.
    """
    problems = plan_problems(target, facts, calibration=calibration)
    if problems:
        raise InputError(f"target {target.name}: {problems[0]}")
    version = str(target.stack["tensorrt"])
    gen = trt_generation(version)
    b, run = target.build, target.run
    major = version_tuple(version)[0]
    notes: list[str] = []

    dims = facts.input_dims
    sample = [int(d) for d in dims[1:]]
    dynamic = dims[0] is None
    batches = sorted(run.batch_sizes) if dynamic else [int(dims[0])]
    if b.dla_core >= 0 and len(batches) > 1:
        # DLA engines take static shapes only (min = opt = max).
        notes.append(f"DLA needs static shapes: the engine is built for batch {batches[0]} only "
                     f"(the target asks for {', '.join(map(str, batches))})")
        batches = batches[:1]
    # One profile from the smallest to the largest benchmarked batch, tuned for the smallest:
    # batch-1 latency is what an edge device is judged by.
    profile = {"min": [batches[0], *sample], "opt": [batches[0], *sample], "max": [batches[-1], *sample]}

    flags: list[str] = []
    int8_mode = ""
    if gen != "11":
        if b.precision == "fp16" or (b.precision == "int8" and b.dla_core >= 0):
            flags.append("FP16")   # with INT8 on DLA: layers without an INT8 kernel need FP16, never FP32
        if b.precision == "int8":
            flags.append("INT8")
            int8_mode = "calibrator"
    elif b.precision == "int8":
        int8_mode = "qdq"
    if b.sparsity == "2:4":
        flags.append("SPARSE_WEIGHTS")
        if target.hardware.get("sparse_tensor_cores") is False:
            notes.append(f"{target.hardware.get('module', target.name)} has no sparse tensor cores (pre-Ampere): "
                         f"SPARSE_WEIGHTS is harmless there but picks no sparse kernel")
    if b.dla_core >= 0 and b.gpu_fallback:
        flags.append("GPU_FALLBACK")

    cal = None
    onnx_name = onnx_file
    if int8_mode:
        source = calibration if calibration is not None else b.calibration
        # A static-batch network calibrates at its own batch.
        cal_batch = min(CALIBRATION_BATCH, max(1, calibration_samples)) if dynamic else batches[0]
        cal = CalibrationPlan(inputs=CALIBRATION_INPUTS, source=str(source), samples=calibration_samples,
                              method=b.calibration_method, batch_size=cal_batch)
        if int8_mode == "calibrator":
            cal.cache = f"{model}.calib.cache"
            cal.calibrator = TRT_CALIBRATORS[b.calibration_method]
            if b.dla_core >= 0 and b.calibration_method != "entropy":
                notes.append("DLA requires IInt8EntropyCalibrator2; set build.calibration_method = \"entropy\"")
        else:
            onnx_name = f"{Path(onnx_file).stem}.qdq.onnx"
            notes.append(f"TensorRT {version} is strongly typed: INT8 comes from the Q/DQ ONNX {onnx_name} "
                         f"(quantised here on the CPU, {b.calibration_method} calibration), not from builder flags")
    if facts.sparse_initializers:
        notes.append(f"{facts.sparse_initializers} sparse initializer(s) were densified: TensorRT's ONNX parser "
                     f"reads dense initializers only")

    return EnginePlan(
        model=model, target=target.name, tensorrt=version, generation=gen, onnx=onnx_name,
        engine=f"{model}.plan", precision=b.precision, int8_mode=int8_mode, strongly_typed=gen == "11",
        explicit_batch=major < 10, builder_flags=flags, workspace_mb=b.workspace_mb, sparsity=b.sparsity,
        dla_core=b.dla_core, gpu_fallback=b.gpu_fallback,
        timing_cache=f"{target.name}.trt{version}.timing.cache" if b.timing_cache else "",
        input_name=facts.input_name, input_shape=sample, dynamic_batch=dynamic, profile=profile,
        batch_sizes=batches, iterations=run.iterations, duration_s=max(1, math.ceil(run.min_seconds)),
        warmup_ms=TRTEXEC_WARMUP_MS, percentiles=list(run.percentiles), calibration=cal,
        build_log=f"{model}.build.log", layer_info=f"{model}.layers.json", notes=notes,
    )


def load_engine_plans(run_dir: Path) -> dict[str, EnginePlan]:
    """The EnginePlans of a prepared run directory (its engine_plan.json)."""
    path = Path(run_dir) / "engine_plan.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} not found: prepare the run with `edgeprune deploy --target <tensorrt target>`") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e.msg})") from None
    if doc.get("schema") != PLAN_SCHEMA:
        raise InputError(f"{path}: not an edgeprune engine plan (schema {doc.get('schema')!r})")
    return {k: EnginePlan.from_dict(v) for k, v in doc["models"].items()}
