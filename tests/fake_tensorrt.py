"""A fake `tensorrt` module and a fake CUDA runtime, for the tests that cannot reach a GPU.

It models only what edgeprune calls, and only where a TensorRT generation has it (DEPLOY.md §1.7):
no `MemoryPoolType` in 8.2, no binding API from 10.0, no `EXPLICIT_BATCH`, FP16/INT8 flags or
calibrators in 11, `device_memory_size_v2` from 10.1 and `device_memory_size` up to 10.x. Calling a
removed API fails as it would on the real module (AttributeError). Every call is recorded in
`module.calls` as (name, args).

An engine costs what its model costs: it runs the ONNX file it was built from with ONNX Runtime on
the fake device's memory (`module.cuda`, a `FakeCuda`), and the device clock that CUDA events read
advances by that run's wall time. So a timing taken through the fake follows the real cost of the
two models, and a dense/pruned mix-up shows.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import re
import sys
import time
import types

import numpy as np
import onnxruntime as ort


def make_fake_tensorrt(version: str, *, parse_ok: bool = True, eligible: str = "/fc1/Gemm + /act1/Relu, /fc2/Gemm",
                       picked: str = "/fc1/Gemm + /act1/Relu", cuda: FakeCuda | None = None) -> types.ModuleType:
    v = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    major = v[0]
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    calls: list[tuple[str, tuple]] = []
    m.calls = calls
    m.cuda = device = cuda if cuda is not None else FakeCuda()

    def rec(name, *args):
        calls.append((name, args))

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            rec("ILogger.__init__")

    ILogger.Severity = Severity

    class Logger(ILogger):
        WARNING = Severity.WARNING
        INFO = Severity.INFO

        def __init__(self, min_severity=Severity.WARNING):
            ILogger.__init__(self)

        def log(self, severity, msg):
            pass

    m.ILogger, m.Logger = ILogger, Logger
    net_flags = ["EXPLICIT_BATCH"] if major < 11 else []
    if major >= 10:
        net_flags.append("STRONGLY_TYPED")
    m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                   {n: i for i, n in enumerate(net_flags)}, start=0)
    builder_flags = ["SPARSE_WEIGHTS", "GPU_FALLBACK"] + (["FP16", "INT8"] if major < 11 else [])
    m.BuilderFlag = enum.Enum("BuilderFlag", builder_flags)
    if v >= (8, 4):
        m.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    m.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "DETAILED", "NONE"])
    m.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
    m.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    m.nptype = lambda trt_type: np.float32

    if major < 11:
        class IInt8Calibrator:
            def __init__(self):
                rec(f"{type(self).__mro__[1].__name__}.__init__")

        m.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (IInt8Calibrator,), {})
        m.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (IInt8Calibrator,), {})

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return b"timing-cache:" + self.blob

    config_attrs = {"profiling_verbosity", "default_device_type", "DLA_core"}
    if major < 10:
        config_attrs.add("max_workspace_size")
    if major < 11:
        config_attrs.add("int8_calibrator")

    class BuilderConfig:
        def __init__(self):
            object.__setattr__(self, "flags", [])
            object.__setattr__(self, "values", {})
            object.__setattr__(self, "cache", None)

        def __setattr__(self, name, value):
            if name not in config_attrs:
                raise AttributeError(f"'IBuilderConfig' object has no attribute '{name}' (TensorRT {version})")
            rec(f"config.{name}", value)
            self.values[name] = value

        def __getattr__(self, name):
            if name in config_attrs:
                return self.values.get(name)
            raise AttributeError(name)

        def set_flag(self, flag):
            rec("config.set_flag", flag.name)
            self.flags.append(flag.name)

        def add_optimization_profile(self, profile):
            rec("config.add_optimization_profile", profile.shapes)

        def create_timing_cache(self, serialized_timing_cache):
            rec("config.create_timing_cache", serialized_timing_cache)
            return TimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("config.set_timing_cache", ignore_mismatch)
            object.__setattr__(self, "cache", cache)

        def get_timing_cache(self):
            return self.cache

    if v >= (8, 4):
        def set_memory_pool_limit(self, pool, pool_size):
            rec("config.set_memory_pool_limit", pool.name, pool_size)
        BuilderConfig.set_memory_pool_limit = set_memory_pool_limit
    if major < 11:
        def set_calibration_profile(self, profile):
            rec("config.set_calibration_profile", profile.shapes)
        BuilderConfig.set_calibration_profile = set_calibration_profile

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, input, min, opt, max):     # TensorRT's parameter names
            self.shapes[input] = (list(min), list(opt), list(max))

    class ParserError:
        def desc(self):
            return "Unsupported ONNX data type: DOUBLE (11)"

        def node(self):
            return 3

    class Network:
        _onnx = ""

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1
            self._network = network

        def parse_from_file(self, model):
            rec("parser.parse_from_file", model)
            self._network._onnx = model
            return parse_ok

        def get_error(self, index):
            return ParserError()

    class Builder:
        num_DLA_cores = 2

        def __init__(self, logger):
            rec("Builder", type(logger).__name__)
            self.logger = logger

        def create_network(self, flags):
            rec("builder.create_network", flags)
            return Network()

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec("builder.build_serialized_network")
            self.logger.log(Severity.VERBOSE, "tactic timing chatter that the log keeps out")
            if "SPARSE_WEIGHTS" in config.flags:
                self.logger.log(Severity.INFO, f"(Sparsity) Layers eligible for sparse math: {eligible}")
                self.logger.log(Severity.INFO, f"(Sparsity) TRT inference plan picked sparse implementation for layers: {picked}")
            cal = config.values.get("int8_calibrator")
            if cal is not None:     # calibration: read the cache, else feed every batch, then write it
                if cal.read_calibration_cache() is None:
                    n = 0
                    while cal.get_batch(["input"]) is not None:
                        n += 1
                    rec("calibrated_batches", n)
                    cal.write_calibration_cache(f"TRT-{version}-EntropyCalibration2\ninput: 3c010a14\n".encode())
            # the plan holds the model it runs (its path, then its bytes), as a real plan holds its weights,
            # and the precision it was built in: it runs after its ONNX file is gone (the engine cache)
            precision = next((f for f in ("INT8", "FP16") if f in config.flags), "FP32")
            with open(network._onnx, "rb") as f:
                model = f.read()
            return bytearray(f"fake-plan-{version} {precision}\n{network._onnx}\n".encode() + model)

    class EngineInspector:
        """The engine's layers as `--exportLayerInfo` writes them (detailed verbosity): one layer per
        Gemm/MatMul/Conv of the model, a following Relu fused into it, in the precision built."""

        def __init__(self, engine):
            self._engine = engine

        def get_engine_information(self, format):
            rec("inspector.get_engine_information", format)
            return layer_info_json(self._engine._onnx, self._engine._precision, major)

    m.LayerInformationFormat = enum.Enum("LayerInformationFormat", ["ONELINE", "JSON"])

    class Engine:
        def __init__(self, onnx_path, precision="FP32", model=b""):
            self._onnx = onnx_path
            self._precision = precision
            self.num_io_tensors = 2
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            # a plan that names no model (a hand-made b"fake-plan") deserializes, but cannot run
            self._session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]) if model else None

        def create_execution_context(self):
            return Context(self)

        def create_engine_inspector(self):
            return EngineInspector(self)

    def memory_v1(self):
        rec("engine.device_memory_size")
        return 1 << 20

    def memory_v2(self):
        rec("engine.device_memory_size_v2")
        return 1 << 20

    if major < 11:
        Engine.device_memory_size = property(memory_v1)
    if v >= (10, 1):
        Engine.device_memory_size_v2 = property(memory_v2)
    names = ["input", "logits"]
    shapes = {"input": (-1, 1, 28, 28), "logits": (-1, 10)}
    if v >= (8, 5):
        Engine.get_tensor_name = lambda self, index: names[index]
        Engine.get_tensor_mode = lambda self, name: m.TensorIOMode.INPUT if name == "input" else m.TensorIOMode.OUTPUT
        Engine.get_tensor_dtype = lambda self, name: "FLOAT"
    if major < 10:
        Engine.num_bindings = 2
        Engine.get_binding_name = lambda self, i: names[i]
        Engine.get_binding_index = lambda self, n: names.index(n)
        Engine.binding_is_input = lambda self, i: i == 0
        Engine.get_binding_dtype = lambda self, i: "FLOAT"

    class Context:
        def __init__(self, engine):
            self.engine, self.batch, self._addresses = engine, None, {}

        def _execute(self, addresses):
            """Run the engine's model on the device memory at `addresses`; the device clock
            advances by the time that took."""
            rec("engine.execute", self.engine._onnx)
            sess = self.engine._session
            t0 = time.perf_counter_ns()
            # copied in through cudaMemcpyAsync the device holds flat bytes: the context's shape says what they are
            x = device.memory[addresses["input"]].reshape((self.batch, *shapes["input"][1:]))
            y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            device.clock_ms += (time.perf_counter_ns() - t0) / 1e6
            device.memory[addresses["logits"]] = y

    def set_input_shape(self, name, shape):
        rec("ctx.set_input_shape", name, list(shape))
        self.batch = shape[0]

    def get_tensor_shape(self, name):
        return (self.batch, *shapes[name][1:])

    def set_binding_shape(self, i, shape):
        rec("ctx.set_binding_shape", i, list(shape))
        self.batch = shape[0]

    def get_binding_shape(self, i):
        return (self.batch, *shapes[names[i]][1:])

    def execute_async_v3(self, stream_handle):
        rec("ctx.execute_async_v3", stream_handle)
        self._execute(self._addresses)
        return True

    def execute_async_v2(self, bindings, stream_handle):
        rec("ctx.execute_async_v2", list(bindings), stream_handle)
        self._execute(dict(zip(names, bindings)))
        return True

    def set_tensor_address(self, name, memory):
        rec("ctx.set_tensor_address", name, memory)
        self._addresses[name] = memory

    if v >= (8, 5):
        Context.set_input_shape, Context.get_tensor_shape = set_input_shape, get_tensor_shape
        Context.set_tensor_address = set_tensor_address
        Context.execute_async_v3 = execute_async_v3
    if major < 10:
        Context.set_binding_shape, Context.get_binding_shape = set_binding_shape, get_binding_shape
        Context.execute_async_v2 = execute_async_v2

    class Runtime:
        def __init__(self, logger):
            self.DLA_core = -1

        def deserialize_cuda_engine(self, serialized_engine):
            data = bytes(serialized_engine)
            rec("runtime.deserialize_cuda_engine", data, self.DLA_core)
            head, _, rest = data.partition(b"\n")
            if not head.startswith(b"fake-plan"):
                return None
            _, _, precision = head.decode().partition(" ")
            onnx_path, _, model = rest.partition(b"\n")
            return Engine(onnx_path.decode(), precision or "FP32", model)

    m.Builder, m.OnnxParser, m.Runtime = Builder, OnnxParser, Runtime
    return m


def layer_info_json(onnx_path: str, precision: str, major: int) -> str:
    """A fake engine's layers as the inspector (and trtexec's --exportLayerInfo, detailed) write them:
    one layer per Gemm/MatMul/Conv of the model, a following Relu fused into it, in ``precision``."""
    import json

    nodes = onnx_nodes(onnx_path)
    layers = []
    for i, (op, name, output) in enumerate(nodes):
        if op in ("Gemm", "MatMul", "Conv"):
            fused = i + 1 < len(nodes) and nodes[i + 1][0] == "Relu"
            layers.append({"Name": name + (f" + {nodes[i + 1][1]}" if fused else ""),
                           "LayerType": "CaskConvolution" if op == "Conv" else "CaskGemm",
                           "Outputs": [{"Name": output, "Format/Datatype": f"Row major linear {precision}"}],
                           "TacticName": "fake_tactic", "HasSparseWeights": 0})
    return json.dumps({"Layers": layers, ("I/O Tensors" if major >= 11 else "Bindings"): ["input", "logits"]})


def onnx_nodes(path: str) -> list[tuple[str, str, str]]:
    """(op_type, name, first output) of each node of an ONNX file, read from its protobuf directly: the
    fake also runs on a test 'board' where the onnx package is blocked, as on a real one.
    ModelProto.graph is field 7, GraphProto.node 1; NodeProto.output 2, name 3, op_type 4."""
    from pathlib import Path

    graph = next(v for f, v in _pb_fields(Path(path).read_bytes()) if f == 7)
    nodes = []
    for f, v in _pb_fields(graph):
        if f == 1:
            fields = _pb_fields(v)

            def strings(k, fields=fields):
                return [x.decode() for g, x in fields if g == k]

            nodes.append((strings(4)[0], (strings(3) or [""])[0], strings(2)[0]))
    return nodes


def _pb_fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) of a protobuf message: bytes for length-delimited fields, ints for varints."""
    i, out = 0, []
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"protobuf wire type {wire}")
        out.append((key >> 3, v))
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


class FakeCuda:
    """Stands in for edgeprune.backends.tensorrt.Cuda: device memory is a dict of numpy copies;
    `clock_ms` is the device's clock, which fake engines advance as they execute and events read."""

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self.copies_in: list[np.ndarray] = []
        self.events = 0
        self.clock_ms = 0.0
        self.stamps: dict[int, float] = {}
        self._next = 0x1000

    def malloc(self, nbytes):
        self._next += 0x1000
        return self._next

    def free(self, ptr):
        self.memory.pop(ptr, None)

    def to_device(self, ptr, a, stream=0):
        self.memory[ptr] = a.copy()
        self.copies_in.append(a.copy())

    def to_host(self, a, ptr, stream=0):
        a[...] = self.memory[ptr]

    def stream(self):
        return 7

    def sync(self, stream):
        pass

    def event(self):
        self.events += 1
        return self.events

    def record(self, event, stream):
        self.stamps[event] = self.clock_ms

    def elapsed_ms(self, start, end):
        return self.stamps[end] - self.stamps[start]


class FakeCudart:
    """cuda-python's runtime module (`cuda.bindings.runtime`) over a `FakeCuda`: what
    `edgeprune.backends.tensorrt.Cuda()` imports where there is no GPU. Copies read and write the real
    host addresses they are given, as `cudaMemcpyAsync` does; every call returns `(err, *values)`."""

    class cudaMemcpyKind(enum.Enum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, device: FakeCuda):
        self.device = device

    def cudaMalloc(self, size):
        return 0, self.device.malloc(size)

    def cudaFree(self, devPtr):
        self.device.free(devPtr)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if kind is self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.device.to_device(dst, np.frombuffer(ctypes.string_at(src, count), dtype=np.float32))
        else:
            data = np.ascontiguousarray(self.device.memory[src], dtype=np.float32)
            ctypes.memmove(dst, data.ctypes.data, min(count, data.nbytes))
        return (0,)

    def cudaStreamCreate(self):
        return 0, self.device.stream()

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaEventCreate(self):
        return 0, self.device.event()

    def cudaEventRecord(self, event, stream):
        self.device.record(event, stream)
        return (0,)

    def cudaEventSynchronize(self, event):
        return (0,)

    def cudaEventElapsedTime(self, start, end):
        return 0, self.device.elapsed_ms(start, end)

    def cudaRuntimeGetVersion(self):
        return 0, 12060

    def cudaGetErrorName(self, error):
        return 0, b"cudaErrorFake"


def fake_gpu_modules(version: str, cuda: FakeCuda | None = None) -> dict[str, types.ModuleType]:
    """`sys.modules` entries that make a fake TensorRT `version` and cuda-python importable, as on a
    Jetson: `tensorrt` and `cuda.bindings.runtime` over one fake device."""
    trt = make_fake_tensorrt(version, cuda=cuda)
    mods = {"tensorrt": trt, "cuda": types.ModuleType("cuda"), "cuda.bindings": types.ModuleType("cuda.bindings")}
    for name, mod in mods.items():
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name != "tensorrt")
    mods["cuda"].__path__, mods["cuda.bindings"].__path__ = [], []
    mods["cuda.bindings"].runtime = mods["cuda.bindings.runtime"] = FakeCudart(trt.cuda)
    mods["cuda"].bindings = mods["cuda.bindings"]
    return mods


def install_fake_gpu(monkeypatch, version: str, cuda: FakeCuda | None = None) -> types.ModuleType:
    """Make the fake TensorRT and cuda-python importable for one test; returns the fake `tensorrt`."""
    mods = fake_gpu_modules(version, cuda)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods["tensorrt"]


def orin_nano_toml(description: str, *, trt: str = "10.3.0", build: str = "", run: str = "", extra: str = "") -> str:
    """A Jetson Orin Nano target file for tests: the board's facts, fp16, plus ``build``/``run`` lines."""
    return (f'description = "{description}"\nbackend = "tensorrt"\n[stack]\ntensorrt = "{trt}"\n'
            '[hardware]\nmodule = "jetson-orin-nano-8gb"\ndla_cores = 0\nsparse_tensor_cores = true\n'
            f'[build]\nprecision = "fp16"\n{build}[run]\n{run}{extra}')
