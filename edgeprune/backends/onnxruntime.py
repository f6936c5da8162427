"""ONNX Runtime backend: the engine is the graph ONNX Runtime optimised at the target's level.

Building = (for `precision = "int8"`, first a static INT8 Q/DQ quantisation with
`edgeprune.quantize` on the target's calibration set, then) loading the model once with
`optimized_model_filepath` set, so the saved file is the graph the runtime would execute (fusions,
constant folding, Q/DQ pairs fused into QLinear ops). With `model_format = "ort"` it is saved in
ORT format, as `python -m onnxruntime.tools.convert_onnx_models_to_ort` with the "Fixed"
optimisation style does. `ort_target_platform` does what that tool's `--target_platform` does: for
"arm" the x86-only NCHWc layout transformer is disabled and int8 Q/DQ stays int8
(`session.qdqisint8allowed`); an "all"-level engine built for "" (this host) is for this host only.
Opening = a session with the target's threads, spinning and arena settings, and an explicit check
that the providers asked for are the ones the session got: ONNX Runtime otherwise falls back to the
CPU without a word.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from edgeprune.backends.base import Engine
from edgeprune.errors import InputError, ShapeError, first_line
from edgeprune.versions import version_in_range

# The layout transformer that writes x86-only com.microsoft.nchwc nodes (convert_onnx_models_to_ort
# disables it unless --target_platform amd64).
_X86_ONLY_OPTIMIZERS = ("NchwcTransformer",)

if TYPE_CHECKING:
    from edgeprune.targets import BuildPolicy, Target

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}
# What ONNX Runtime raises for a model it cannot load (its own pybind types; RuntimeError for a
# C++ exception it does not map). Python errors from our side of the call are bugs and propagate.
_LOAD_ERRORS = (RuntimeError, *(t for t in vars(ort.capi.onnxruntime_pybind11_state).values()
                                 if isinstance(t, type) and issubclass(t, Exception)))


class OrtSession:
    """An ONNX Runtime session fed one input, returning the first output."""

    def __init__(self, sess: ort.InferenceSession):
        self.inner = sess
        inp = sess.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_shape: list[int | str | None] = list(inp.shape)
        if inp.type not in _NP_TYPES:
            # Feeding float32 to, say, a bfloat16 or string input would fail later or, worse, run on
            # silently converted data.
            raise InputError(f"model input '{inp.name}' has type {inp.type}, which edgeprune cannot feed "
                             f"(supported: {', '.join(sorted(_NP_TYPES))})")
        self.input_dtype = _NP_TYPES[inp.type]
        self.output_names: list[str] = [sess.get_outputs()[0].name]
        self.providers: list[str] = list(sess.get_providers())

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != self.input_dtype:
            x = x.astype(self.input_dtype)
        try:
            return self.inner.run(self.output_names, {self.input_name: x})[0]
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.Fail) as e:
            if "dimension" in str(e).lower() or "rank" in str(e).lower() or "shape" in str(e).lower():
                raise ShapeError(
                    f"input of shape {tuple(x.shape)} does not fit the model's input "
                    f"'{self.input_name}' {self.input_shape}"
                ) from None
            raise


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def validate(self, onnx_path: Path, target: Target) -> list[str]:
        # Imported here: the memory probe opens sessions through this module, and a device-side
        # process needs onnxruntime, not onnx (whose import alone costs tens of MB of RSS).
        from edgeprune.validation import errors, validate_onnx

        return [str(p) for p in errors(validate_onnx(Path(onnx_path), target))] + self.target_problems(target)

    def target_problems(self, target: Target, input_shape: tuple[int, ...] | None = None) -> list[str]:
        problems = []
        if target.build.precision == "fp16":
            problems.append("precision 'fp16' is not implemented by the onnxruntime backend (use fp32 or int8)")
        if target.build.precision == "int8":
            from edgeprune.quantize import calibration_problems

            problems += calibration_problems(target.build.calibration, input_shape)
        # A remote target's stack is checked on the device; only a local one is this process's.
        if target.ssh is None:
            problems += _version_problems(target)
        return problems

    def max_opset(self, target: Target) -> int | None:
        return target.stack.get("max_opset")

    def export_batch(self, target: Target) -> int | None:
        return None

    def measured_elsewhere(self, target: Target) -> str | None:
        return foreign_arch(target)

    def host_problems(self, target: Target) -> list[str]:
        return _missing_providers(target.build) + _version_problems(target)

    def build(self, onnx_path: Path, target: Target, out_dir: Path) -> Engine:
        src = Path(onnx_path)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        b = target.build
        t0 = time.perf_counter()
        extra = {"graph_optimization_level": b.graph_optimization_level, "onnxruntime": ort.__version__,
                 "precision": b.precision, "model_format": b.model_format,
                 "ort_target_platform": b.ort_target_platform or "host"}
        model = src
        if b.precision == "int8":
            model, quant = self.quantize(src, target, out)
            extra.update(quant)
        suffix = ".ort" if b.model_format == "ort" else ".onnx"
        final = out / f"{model.stem}.{target.name}{suffix}"
        tmp = out / f".{final.stem}.{os.getpid()}.tmp{suffix}"
        so = session_options(b)
        so.optimized_model_filepath = str(tmp)
        so.add_session_config_entry("session.save_model_format", "ORT" if suffix == ".ort" else "ONNX")
        try:
            self._create(model, so, b)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return Engine(path=final, backend=self.name, target=target.name, source=src,
                      build_seconds=time.perf_counter() - t0, extra=extra)

    def quantize(self, src: Path, target: Target, out: Path) -> tuple[Path, dict[str, str]]:
        """The static INT8 Q/DQ model of `src` (next to the engine), calibrated on the target's set."""
        from edgeprune.quantize import calibration_path, calibration_problems, load_calibration, quantize_qdq

        problems = calibration_problems(target.build.calibration)
        if problems:
            raise InputError(problems[0])
        cal = calibration_path(target.build.calibration)
        res = quantize_qdq(src, out / f"{src.stem}.int8.onnx", load_calibration(cal),
                           method=target.build.calibration_method, per_channel=True)
        return res.path, {
            "int8_onnx": str(res.path),
            "calibration": str(cal),
            "calibration_method": res.method,
            "calibration_samples": str(res.calibration_samples),
            "per_channel": str(res.per_channel).lower(),
            "quantized_nodes": str(len(res.quantized)),
            "fp32_compute_nodes": ",".join(res.excluded),
            "quantize_seconds": f"{res.seconds:.3f}",
        }

    def open(self, engine: Engine, target: Target) -> OrtSession:
        so = session_options(target.build)
        return OrtSession(self._create(Path(engine.path), so, target.build))

    def stack(self, target: Target) -> dict[str, str]:
        b = target.build
        return {
            "backend": self.name,
            "onnxruntime": ort.__version__,
            "cpu": cpu_name(),
            "cpu_count": str(os.cpu_count() or 0),
            "threads": str(b.threads),
            "inter_op_threads": str(b.inter_op_threads),
            "execution_providers": ",".join(b.execution_providers),
            "graph_optimization_level": b.graph_optimization_level,
            "precision": b.precision,
            "model_format": b.model_format,
            "ort_target_platform": b.ort_target_platform or "host",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        }

    def _create(self, path: Path, so: ort.SessionOptions, build: BuildPolicy) -> ort.InferenceSession:
        asked = list(build.execution_providers)
        missing = _missing_providers(build)
        if missing:
            raise InputError(missing[0])
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=asked,
                                        disabled_optimizers=disabled_optimizers(build))
        except _LOAD_ERRORS as e:
            if "fallback to CPU EP has been explicitly disabled" in str(e):
                raise InputError(
                    f"execution provider(s) {', '.join(asked)} cannot run every node of {path.name}, and the target "
                    f"does not list CPUExecutionProvider to take the rest"
                ) from None
            raise InputError(f"onnxruntime cannot load {path.name}: {first_line(e)}") from None
        got = sess.get_providers()
        lost = [p for p in asked if p not in got]
        if lost:
            raise InputError(
                f"execution provider '{lost[0]}' was asked for but the session runs on {', '.join(got)}"
            )
        return sess


def foreign_arch(target: Target) -> str | None:
    """Why numbers measured here are not the device's (another CPU architecture), or None.

    The engine files are still right for the device (an `arm` build leaves out x86-only layouts), and
    ONNX Runtime runs them here, so they are built and checked here; only the latencies are this host's.
    """
    wanted = target.hardware.get("arch")
    here = {"arm64": "aarch64", "amd64": "x86_64"}.get(platform.machine().lower(), platform.machine().lower())
    if wanted and wanted != here:
        return f"the target is an {wanted} device and this host is {here}"
    return None


def _version_problems(target: Target) -> list[str]:
    wanted = target.stack.get("onnxruntime")
    if wanted and not version_in_range(ort.__version__, wanted):
        return [f"installed onnxruntime {ort.__version__} is outside the target's range '{wanted}'"]
    return []


def disabled_optimizers(build: BuildPolicy) -> list[str] | None:
    """Graph transformers left out because the target's CPU is not this host's (None: all run)."""
    return list(_X86_ONLY_OPTIMIZERS) if build.ort_target_platform == "arm" else None


def _missing_providers(build: BuildPolicy) -> list[str]:
    available = ort.get_available_providers()
    return [f"execution provider '{p}' is not available in this onnxruntime build (available: {', '.join(available)})"
            for p in build.execution_providers if p not in available]


def session_options(build: BuildPolicy) -> ort.SessionOptions:
    """SessionOptions for a build policy: sequential execution, fixed threads, spinning as asked."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[build.graph_optimization_level]
    so.intra_op_num_threads = build.threads
    so.inter_op_num_threads = build.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin = "1" if build.spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.enable_cpu_mem_arena = build.cpu_mem_arena
    so.log_severity_level = 3
    if build.ort_target_platform:
        # As convert_onnx_models_to_ort --target_platform: ARM has s8s8 int8 kernels, so Q/DQ int8
        # stays int8 there; for amd64 ONNX Runtime rewrites int8 activations to uint8.
        so.add_session_config_entry("session.qdqisint8allowed", "1" if build.ort_target_platform == "arm" else "0")
    if "CPUExecutionProvider" not in build.execution_providers:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") or line.startswith("Model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
