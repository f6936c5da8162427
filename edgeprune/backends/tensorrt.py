"""TensorRT backend: build an EnginePlan through TensorRT's Python API, run and time the engine.

Everything decided about a build lives in the plan (`trt_plan.py`); this module only turns it into
TensorRT calls, with the version branches of DEPLOY.md §1.2-§1.7:

* 8.2: `EXPLICIT_BATCH` network flag, `config.max_workspace_size`, binding-index I/O
  (`execute_async_v2`);
* 8.5-10.x: `set_memory_pool_limit(WORKSPACE)`, FP16/INT8 builder flags with an
  `IInt8EntropyCalibrator2` (or MinMax) fed from the calibration .npy, name-based I/O
  (`set_tensor_address`, `execute_async_v3`); EXPLICIT_BATCH only below 10.0;
* 11.x: strongly typed networks, no precision flags and no calibrators: INT8 arrives as a Q/DQ ONNX.

Common to all: SPARSE_WEIGHTS, DLA core + GPU_FALLBACK, a timing cache, `build_serialized_network`,
a captured build log (its "(Sparsity)" lines), the engine's device memory (`device_memory_size`,
`device_memory_size_v2` from 10.1) and GPU time per inference from CUDA events (cuda-python, as
TensorRT's own samples use since 10.13). `tensorrt` and `cuda` are imported lazily: the rest of
edgeprune, and the planning, run on machines without them.

Device side: `python -m edgeprune.backends.tensorrt build engine_plan.json --model pruned`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.backends.base import Engine
from edgeprune.backends.trt_plan import EnginePlan, onnx_facts, plan_engine, plan_problems
from edgeprune.backends.trt_versions import trt_generation, trt_parser_max_opset
from edgeprune.versions import version_tuple
from edgeprune.backends.trtexec import SparsityResult, parse_sparsity
from edgeprune.errors import InputError, ShapeError
from edgeprune.fileio import atomic_write, file_digest, link_or_copy

if TYPE_CHECKING:
    from edgeprune.targets import Target

NOT_INSTALLED = "TensorRT is not installed on this machine"
CUDA_NOT_INSTALLED = "cuda-python is not installed on this machine (pip install cuda-python)"


def _import_trt():
    try:
        import tensorrt
    except ImportError:
        raise InputError(NOT_INSTALLED) from None
    return tensorrt


class Cuda:
    """The CUDA runtime calls edgeprune needs, through cuda-python (`cuda.bindings.runtime`, or
    `cuda.cudart` before cuda-python 12.6). Every call returns `(err, *values)`."""

    def __init__(self, cudart: Any = None):
        if cudart is None:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                try:
                    from cuda import cudart
                except ImportError:
                    raise InputError(CUDA_NOT_INSTALLED) from None
        self.rt = cudart

    def _ck(self, ret: Any) -> Any:
        err, *values = ret if isinstance(ret, tuple) else (ret,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error: {self.rt.cudaGetErrorName(err)[1]}")
        return values[0] if len(values) == 1 else (values or None)

    def malloc(self, nbytes: int) -> int:
        return int(self._ck(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        self._ck(self.rt.cudaFree(ptr))

    def to_device(self, ptr: int, a: np.ndarray, stream: int = 0) -> None:
        self._ck(self.rt.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def to_host(self, a: np.ndarray, ptr: int, stream: int = 0) -> None:
        self._ck(self.rt.cudaMemcpyAsync(a.ctypes.data, ptr, a.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def stream(self) -> int:
        return int(self._ck(self.rt.cudaStreamCreate()))   # TensorRT takes the handle as an int

    def sync(self, stream: int) -> None:
        self._ck(self.rt.cudaStreamSynchronize(stream))

    def event(self) -> Any:
        return self._ck(self.rt.cudaEventCreate())

    def record(self, event: Any, stream: int) -> None:
        self._ck(self.rt.cudaEventRecord(event, stream))

    def runtime_version(self) -> int:
        """The CUDA runtime's version, as CUDA writes it (12060 = 12.6)."""
        return int(self._ck(self.rt.cudaRuntimeGetVersion()))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._ck(self.rt.cudaEventSynchronize(end))
        return float(self._ck(self.rt.cudaEventElapsedTime(start, end)))


def _capturing_logger(trt: Any, lines: list[str]) -> Any:
    """A trt.ILogger that keeps INFO and above: the "(Sparsity)" lines are INFO (DEPLOY §3.4)."""

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity != trt.ILogger.Severity.VERBOSE:
                lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    return CapturingLogger()


def make_calibrator(trt: Any, plan: EnginePlan, run_dir: Path, cuda: Cuda) -> Any:
    """An INT8 calibrator (TensorRT <= 10) of the plan's class, fed from the calibration .npy in
    batches of `plan.calibration.batch_size`, reading and writing the plan's cache file."""
    cal = plan.calibration
    base = getattr(trt, cal.calibrator, None)
    if base is None:
        raise InputError(f"TensorRT {trt.__version__} has no {cal.calibrator} (calibrators were removed in 11.0)")
    x = np.ascontiguousarray(np.load(run_dir / cal.inputs), dtype=np.float32)
    cache = run_dir / cal.cache
    bs = cal.batch_size

    class Calibrator(base):
        def __init__(self):
            base.__init__(self)     # required: the C++ side is built here
            self.batches = iter([x[i:i + bs] for i in range(0, len(x) - bs + 1, bs)])
            self.device = cuda.malloc(bs * int(np.prod(x.shape[1:])) * 4)

        def get_batch_size(self):
            return bs

        def get_batch(self, names):
            batch = next(self.batches, None)
            if batch is None:
                return None
            if len(names) != 1:
                raise InputError(f"calibration feeds one input; the network has {len(names)}: {', '.join(names)}")
            cuda.to_device(self.device, np.ascontiguousarray(batch))
            return [int(self.device)]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data):
            atomic_write(cache, bytes(data), force=True)

    return Calibrator()


@dataclass
class BuildResult:
    engine: str
    seconds: float
    engine_bytes: int
    device_memory_bytes: int
    sparsity: SparsityResult
    build_log: str
    tensorrt: str
    layer_info: str = ""     # the engine inspector's JSON, beside the engine

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_engine(plan: EnginePlan, run_dir: Path, *, trt: Any = None, cuda: Cuda | None = None) -> BuildResult:
    """Build `plan` in `run_dir` through TensorRT's Python API; write the engine, the build log
    and (INT8 <= 10.x) the calibration cache there."""
    trt = trt or _import_trt()
    run_dir = Path(run_dir)
    installed = trt.__version__
    if trt_generation(installed) != plan.generation:
        raise InputError(f"the plan is for TensorRT {plan.tensorrt} (generation {plan.generation}); "
                         f"this machine has TensorRT {installed}")
    major = version_tuple(installed)[0]
    lines: list[str] = []
    logger = _capturing_logger(trt, lines)
    builder = trt.Builder(logger)    # needs a CUDA device
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)     # 11.x: strongly typed whatever the flags
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(run_dir / plan.onnx)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = f"{errors[0].desc()} (node {errors[0].node()})" if errors else "no error reported"
        raise InputError(f"TensorRT cannot parse {plan.onnx}: {first}")

    config = builder.create_builder_config()
    if plan.generation == "8.2":
        config.max_workspace_size = plan.workspace_mb << 20
    else:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.dla_core >= 0:
        if builder.num_DLA_cores <= plan.dla_core:
            raise InputError(f"DLA core {plan.dla_core} requested; this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.dynamic_batch:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, plan.profile["min"], plan.profile["opt"], plan.profile["max"])
        config.add_optimization_profile(profile)
    if plan.int8_mode == "calibrator":
        cuda = cuda or Cuda()
        config.int8_calibrator = make_calibrator(trt, plan, run_dir, cuda)
        if plan.dynamic_batch:
            # Calibration runs at one shape: the calibration batch.
            cal_profile = builder.create_optimization_profile()
            shape = plan.shape(plan.calibration.batch_size)
            cal_profile.set_shape(plan.input_name, shape, shape, shape)
            config.set_calibration_profile(cal_profile)
    cache_path = run_dir / plan.timing_cache if plan.timing_cache else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.exists() else b""
        # The cache header is checked against this device; a foreign cache is refused, not misused.
        config.set_timing_cache(config.create_timing_cache(blob), False)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    atomic_write(run_dir / plan.build_log, ("\n".join(lines) + "\n").encode(), force=True)
    if serialized is None:
        errors = [ln for ln in lines if ln.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
        raise InputError(f"TensorRT could not build {plan.engine}: {errors[-1] if errors else 'see ' + plan.build_log}")
    data = bytes(serialized)
    atomic_write(run_dir / plan.engine, data, force=True)
    if cache_path is not None:
        atomic_write(cache_path, bytes(config.get_timing_cache().serialize()), force=True)

    runtime = trt.Runtime(logger)
    engine = _deserialize(runtime, data, plan)
    if plan.layer_info:
        # the engine inspector's JSON is what trtexec's --exportLayerInfo writes: one parser reads both
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        atomic_write(run_dir / plan.layer_info, str(info).encode(), force=True)
    return BuildResult(engine=plan.engine, seconds=seconds, engine_bytes=len(data),
                       device_memory_bytes=device_memory_bytes(engine, installed),
                       sparsity=parse_sparsity("\n".join(lines)), build_log=plan.build_log, tensorrt=installed,
                       layer_info=plan.layer_info)


def engine_of(plan: EnginePlan, run_dir: Path, result: BuildResult, target: Target, source: Path) -> Engine:
    """The built plan as the pipeline's `Engine`; its plan is written beside it for `TensorRTBackend.open`."""
    plan_file = Path(run_dir) / f"{plan.model}.engine_plan.json"
    atomic_write(plan_file, json.dumps(plan.to_dict(), indent=2).encode(), force=True)
    return Engine(path=Path(run_dir) / plan.engine, backend="tensorrt", target=target.name, source=Path(source),
                  build_seconds=result.seconds,
                  extra={"tensorrt": result.tensorrt, "device_memory_bytes": str(result.device_memory_bytes),
                         "plan": plan_file.name, "layer_info": result.layer_info})


def build_plans(plans: dict[str, dict[str, Any]], run_dir: Path, target: Target) -> dict[str, Engine]:
    """Build plans made elsewhere (`EnginePlan.to_dict()` per model) in ``run_dir``, where their ONNX
    files and calibration inputs are: deploy's own engines, or the board's (it has no onnx to plan with)."""
    engines = {}
    for label, d in plans.items():
        plan = EnginePlan.from_dict(d)
        engines[label] = engine_of(plan, run_dir, build_engine(plan, run_dir), target, Path(run_dir) / plan.onnx)
    return engines


# EnginePlan fields that say only how trtexec times an engine, not how it is built: left out of its
# cache key (the plan file cached beside an engine may carry older ones; TrtSession reads none of them)
TIMING_ONLY = ("iterations", "duration_s", "warmup_ms", "percentiles", "notes")


def engine_stack(target: Target) -> dict[str, str]:
    """What an engine built on this machine is tied to: TensorRT (`TensorRTBackend.stack`), the CUDA
    runtime, the L4T release and the board. An engine built under another never loads, or is not
    the same engine."""
    from edgeprune.device.probe import board

    stack = {**TensorRTBackend().stack(target), "cuda": str(Cuda().runtime_version())}
    return {**stack, **{k: str(v) for k, v in board().items() if v is not None}}


def plan_key(plan: EnginePlan, run_dir: Path, stack: dict[str, str]) -> str:
    """Names a built plan in the engine cache: its build policy (precision, workspace, DLA core,
    profile, flags, calibration...), the digests of the ONNX file and calibration inputs it reads,
    and the ``stack`` it is built on (`engine_stack`)."""
    policy = {k: v for k, v in plan.to_dict().items() if k not in TIMING_ONLY}
    inputs = {name: file_digest(Path(run_dir) / name) for name in _plan_inputs(plan)}
    text = json.dumps({"plan": policy, "inputs": inputs, "stack": stack}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plan_inputs(plan: EnginePlan) -> list[str]:
    return [plan.onnx] + ([plan.calibration.inputs] if plan.calibration else [])


def build_plans_cached(plans: dict[str, dict[str, Any]], run_dir: Path, target: Target,
                       cache: Path) -> tuple[dict[str, Engine], dict[str, str]]:
    """`build_plans` through the engine cache (`edgeprune.measure.pair.cached_build`, keyed by
    `plan_key`): each engine, with its plan and layer information, is reused ("hit") or built in its
    cache slot ("miss"); returns the engines and that status per model."""
    from edgeprune.measure.pair import cached_build

    run_dir, stack = Path(run_dir), engine_stack(target)
    engines, status = {}, {}
    for label, d in plans.items():
        plan = EnginePlan.from_dict(d)

        def build(folder: Path, label: str = label, d: dict = d, plan: EnginePlan = plan) -> Engine:
            folder.mkdir(parents=True)
            for name in _plan_inputs(plan):     # the build reads its inputs beside it
                link_or_copy(run_dir / name, folder / name)
            engine = build_plans({label: d}, folder, target)[label]
            for name in _plan_inputs(plan):     # the job's inputs, not the cache's
                (folder / name).unlink()
            return engine

        engines[label], status[label] = cached_build(cache, plan_key(plan, run_dir, stack), build, backend="tensorrt",
                                                     target=target.name, source=run_dir / plan.onnx)
    return engines, status


def device_memory_bytes(engine: Any, version: str) -> int:
    """Scratch/activation memory an execution context needs (DEPLOY §1.6): `device_memory_size`
    up to 10.0, `device_memory_size_v2` from 10.1 (the only one left in 11)."""
    if version_tuple(version) >= (10, 1):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def _deserialize(runtime: Any, data: bytes, plan: EnginePlan) -> Any:
    if plan.dla_core >= 0:
        runtime.DLA_core = plan.dla_core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise InputError(f"{plan.engine} does not load here: an engine only runs on the TensorRT version and GPU "
                         f"that built it")
    return engine


class TrtSession:
    """One execution context on one engine: `run` copies a batch in and the first output back;
    `time_ms` gives the GPU time of `execute` alone, from CUDA events around it on one stream."""

    def __init__(self, plan: EnginePlan, run_dir: Path, *, trt: Any = None, cuda: Cuda | None = None):
        self.trt = trt or _import_trt()
        self.cuda = cuda or Cuda()
        self.plan = plan
        self.named_io = version_tuple(self.trt.__version__) >= (8, 5)
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(logger)
        self.engine = _deserialize(self.runtime, (Path(run_dir) / plan.engine).read_bytes(), plan)
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()     # never the default stream: it adds synchronisations
        self.input_name = plan.input_name
        self.input_shape: list[int | str | None] = [None if plan.dynamic_batch else plan.batch_sizes[0], *plan.input_shape]
        self.providers = ["TensorRT"]
        self._batch = 0
        self._out: np.ndarray | None = None
        self._ptrs: dict[str, int] = {}
        self._events: tuple[Any, Any] | None = None
        self._loaded: np.ndarray | None = None

    def _io_names(self) -> list[str]:
        e = self.engine
        if self.named_io:
            return [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        return [e.get_binding_name(i) for i in range(e.num_bindings)]

    def _is_input(self, name: str) -> bool:
        e = self.engine
        if self.named_io:
            return e.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
        return e.binding_is_input(e.get_binding_index(name))

    def _prepare(self, batch: int) -> None:
        """Set the input shape for `batch` and allocate every I/O tensor for it."""
        if batch == self._batch:
            return
        for ptr in self._ptrs.values():
            self.cuda.free(ptr)
        self._ptrs = {}
        ctx, e, trt = self.context, self.engine, self.trt
        shape = self.plan.shape(batch)
        if self.named_io:
            ctx.set_input_shape(self.input_name, shape)
        else:
            ctx.set_binding_shape(e.get_binding_index(self.input_name), shape)
        self._out = None
        for name in self._io_names():
            if self.named_io:
                dims, dtype = tuple(ctx.get_tensor_shape(name)), trt.nptype(e.get_tensor_dtype(name))
            else:
                i = e.get_binding_index(name)
                dims, dtype = tuple(ctx.get_binding_shape(i)), trt.nptype(e.get_binding_dtype(i))
            self._ptrs[name] = self.cuda.malloc(int(np.prod(dims)) * np.dtype(dtype).itemsize)
            if self.named_io:
                ctx.set_tensor_address(name, self._ptrs[name])
            if self._out is None and not self._is_input(name):
                self._out, self._out_name = np.empty(dims, dtype=dtype), name
        self._batch = batch

    def _execute(self) -> None:
        if self.named_io:
            ok = self.context.execute_async_v3(stream_handle=self.stream)
        else:
            bindings = [self._ptrs[n] for n in self._io_names()]
            ok = self.context.execute_async_v2(bindings=bindings, stream_handle=self.stream)
        if not ok:
            raise RuntimeError("TensorRT execution failed")

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if list(x.shape[1:]) != self.plan.input_shape:
            raise ShapeError(f"input of shape {tuple(x.shape)} does not fit the engine's input "
                             f"'{self.input_name}' [batch, {', '.join(map(str, self.plan.input_shape))}]")
        self._prepare(len(x))
        self._loaded = None
        self.cuda.to_device(self._ptrs[self.input_name], x, self.stream)
        self._execute()
        self.cuda.to_host(self._out, self._ptrs[self._out_name], self.stream)
        self.cuda.sync(self.stream)
        return self._out.copy()

    def device_time_ns(self, x: np.ndarray) -> int:
        """GPU time of one execution, for `edgeprune.measure.timing.time_interleaved`."""
        return round(self.time_ms(x, 1)[0] * 1e6)

    def time_ms(self, x: np.ndarray, iterations: int) -> list[float]:
        """GPU time (ms) of `iterations` executions on the batch x, one CUDA event pair each."""
        if self._loaded is not x:     # copy the batch in once, outside the timed window
            self.run(x)
            self._loaded = x
        if self._events is None:
            self._events = (self.cuda.event(), self.cuda.event())
        start, end = self._events
        out = []
        for _ in range(iterations):
            self.cuda.record(start, self.stream)
            self._execute()
            self.cuda.record(end, self.stream)
            out.append(self.cuda.elapsed_ms(start, end))
        return out


class TensorRTBackend:
    """The `tensorrt` backend: validation and planning anywhere, building and running where
    TensorRT and a CUDA device are."""

    name = "tensorrt"

    def host_problems(self, target: Target) -> list[str]:
        if importlib.util.find_spec("tensorrt") is None:
            return [NOT_INSTALLED]
        problems = []
        installed = _import_trt().__version__
        wanted = target.stack.get("tensorrt")
        if wanted and version_tuple(installed)[:2] != version_tuple(wanted)[:2]:
            problems.append(f"installed TensorRT {installed} is not the target's {wanted}: an engine built here "
                            f"would not load there")
        if importlib.util.find_spec("cuda") is None:
            problems.append(CUDA_NOT_INSTALLED)
        return problems

    def validate(self, onnx_path: Path, target: Target) -> list[str]:
        path = Path(onnx_path)
        if not path.is_file():
            raise InputError(f"ONNX file not found: {path}")
        try:
            facts = onnx_facts(path)
        except InputError as e:
            return [str(e)]
        from edgeprune.validation import errors, validate_onnx

        # notes (e.g. sparse initializers, which deploy densifies) do not stop a build
        return [str(p) for p in errors(validate_onnx(path, target))] + plan_problems(target, facts)

    def target_problems(self, target: Target, input_shape: tuple[int, ...] | None = None) -> list[str]:
        problems = plan_problems(target)
        if target.build.precision == "int8" and target.build.calibration and not problems:
            from edgeprune.quantize import calibration_problems

            problems += calibration_problems(target.build.calibration, input_shape)
        return problems

    def max_opset(self, target: Target) -> int | None:
        ceiling = trt_parser_max_opset(target.stack["tensorrt"])
        return min(target.stack.get("max_opset", ceiling), ceiling)

    def export_batch(self, target: Target) -> int | None:
        # DLA builds static shapes only: the engine is built for the smallest benchmarked batch
        return min(target.run.batch_sizes) if target.build.dla_core >= 0 else None

    def build(self, onnx_path: Path, target: Target, out_dir: Path) -> Engine:
        import shutil

        src, out = Path(onnx_path), Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if src.parent.resolve() != out.resolve():
            shutil.copyfile(src, out / src.name)
        plan = plan_engine(target, onnx_facts(src), model=src.stem, onnx_file=src.name)
        if plan.int8_mode:
            raise InputError("INT8 engines are built through `edgeprune deploy` (it prepares the calibration data)")
        return engine_of(plan, out, build_engine(plan, out), target, src)

    def open(self, engine: Engine, target: Target) -> TrtSession:
        # the plan file lies beside the engine (a name, so a run directory pulled from a board still reads)
        plan = EnginePlan.from_dict(json.loads((Path(engine.path).parent / Path(engine.extra["plan"]).name).read_text()))
        return TrtSession(plan, Path(engine.path).parent)

    def measured_elsewhere(self, target: Target) -> str | None:
        return None   # an engine is built and timed on the GPU it runs on, or not at all

    def stack(self, target: Target) -> dict[str, str]:
        out = {"backend": self.name, "target_tensorrt": str(target.stack.get("tensorrt", ""))}
        if importlib.util.find_spec("tensorrt") is not None:
            out["tensorrt"] = _import_trt().__version__
        return out


def main(argv: list[str] | None = None) -> int:
    """Device-side entry: `python -m edgeprune.backends.tensorrt build engine_plan.json --model M`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgeprune.backends.tensorrt", description=main.__doc__)
    ap.add_argument("command", choices=["build"])
    ap.add_argument("plan_json", type=Path)
    ap.add_argument("--model", required=True, help="dense or pruned")
    args = ap.parse_args(argv)
    try:
        try:
            doc = json.loads(args.plan_json.read_text())
        except (OSError, json.JSONDecodeError) as e:   # only reading the user's plan file: not the build's own I/O
            raise InputError(f"cannot read {args.plan_json}: {e}") from None
        if args.model not in doc.get("models", {}):
            raise InputError(f"{args.plan_json} has no model '{args.model}' (has: {', '.join(doc.get('models', {}))})")
        plan = EnginePlan.from_dict(doc["models"][args.model])
        result = build_engine(plan, args.plan_json.parent)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
