"""The ONNX Runtime backend validates, builds loadable optimised engines, and refuses silent
provider fallback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.backends import Backend, Engine, get_backend
from edgeprune.backends.onnxruntime import OrtSession
from edgeprune.errors import InputError, ShapeError, UnknownNameError
from edgeprune.targets import load_target


def mlp(path: Path, opset: int = 18, seed: int = 0) -> Path:
    """64 -> 32 -> 10 MLP with a symbolic batch dim; MatMul+Add+Relu so ORT has something to fuse."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((32, 10)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return mlp(tmp_path_factory.mktemp("ort") / "mlp.onnx")


@pytest.fixture(scope="module")
def target():
    return load_target("host-cpu")


@pytest.fixture(scope="module")
def backend() -> Backend:
    return get_backend("onnxruntime")


def with_build(target, **changes):
    return dataclasses.replace(target, build=dataclasses.replace(target.build, **changes))


def test_registry(backend):
    assert isinstance(backend, Backend) and backend.name == "onnxruntime"
    with pytest.raises(UnknownNameError, match="unknown backend 'tflite'"):
        get_backend("tflite")


def test_valid_model_has_no_problems(backend, model, target):
    assert backend.validate(model, target) == []


def test_opset_above_the_target_maximum_is_a_problem(backend, tmp_path, target):
    problems = backend.validate(mlp(tmp_path / "new.onnx", opset=21), dataclasses.replace(target, stack={"max_opset": 17}))
    assert len(problems) == 1 and "opset 21" in problems[0] and "max_opset 17" in problems[0]


def test_broken_graph_is_a_problem(backend, tmp_path, target):
    m = onnx.load(str(mlp(tmp_path / "ok.onnx")))
    m.graph.node[0].input[1] = "no_such_tensor"
    onnx.save(m, str(tmp_path / "broken.onnx"))
    problems = backend.validate(tmp_path / "broken.onnx", target)
    assert problems and "onnx.checker: " in problems[0] and "fix: " in problems[0]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    assert backend.validate(garbage, target)
    with pytest.raises(InputError, match="not found"):
        backend.validate(tmp_path / "missing.onnx", target)


def test_unsupported_precision_and_stack_mismatch_are_problems(backend, model, target):
    t = dataclasses.replace(with_build(target, precision="fp16"), stack={"onnxruntime": "<1.0"})
    problems = backend.validate(model, t)
    assert any("precision 'fp16'" in p for p in problems)
    assert any(f"onnxruntime {ort.__version__} is outside" in p for p in problems)
    # A remote device's stack is not this machine's: not checked here.
    assert not any("outside" in p for p in backend.validate(model, dataclasses.replace(t, ssh="pi@host")))


def test_build_writes_a_loadable_optimised_file(backend, model, target, tmp_path):
    engine = backend.build(model, target, tmp_path / "out")
    assert isinstance(engine, Engine)
    assert engine.path == tmp_path / "out" / "mlp.host-cpu.onnx" and engine.path.is_file()
    assert (engine.backend, engine.target, engine.source) == ("onnxruntime", "host-cpu", model)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [engine.path.name]  # no temp files left
    # The saved graph is the optimised one: MatMul+Add became Gemm / FusedMatMul-style nodes.
    ops = [n.op_type for n in onnx.load(str(engine.path)).graph.node]
    assert "Add" not in ops

    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    direct = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    session = backend.open(engine, target)
    assert isinstance(session, OrtSession)
    assert session.input_name == "x" and session.providers == ["CPUExecutionProvider"]
    np.testing.assert_allclose(session.run(x), direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(session.run(x.astype(np.float64)), direct, rtol=1e-5, atol=1e-5)


def test_session_uses_the_target_settings(backend, model, target, tmp_path):
    t = with_build(target, threads=2, cpu_mem_arena=False, graph_optimization_level="basic")
    session = backend.open(backend.build(model, t, tmp_path), t)
    opts = session.inner.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.enable_cpu_mem_arena is False
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_ort_format_engine(backend, model, target, tmp_path):
    t = with_build(target, model_format="ort", graph_optimization_level="extended")
    engine = backend.build(model, t, tmp_path)
    assert engine.path.suffix == ".ort" and engine.path.read_bytes()[4:8] == b"ORTM"
    assert backend.open(engine, t).run(np.zeros((2, 64), np.float32)).shape == (2, 10)


def test_unavailable_provider_raises_instead_of_falling_back(backend, model, target, tmp_path):
    engine = backend.build(model, target, tmp_path)
    cuda = with_build(target, execution_providers=("CUDAExecutionProvider",))
    with pytest.raises(InputError, match="CUDAExecutionProvider"):
        backend.open(engine, cuda)
    with pytest.raises(InputError, match="CUDAExecutionProvider"):
        backend.build(model, cuda, tmp_path / "cuda")


def test_wrong_input_shape_is_a_shape_error(backend, model, target, tmp_path):
    session = backend.open(backend.build(model, target, tmp_path), target)
    with pytest.raises(ShapeError, match="does not fit"):
        session.run(np.zeros((2, 63), np.float32))


def test_stack_describes_the_runtime(backend, target):
    s = backend.stack(target)
    assert s["onnxruntime"] == ort.__version__ and s["threads"] == "1" and s["cpu"]


# ---------------------------------------------------------------- ARM platform, INT8, providers
from .conftest import CALIBRATION  # noqa: E402


def convnet(path: Path, seed: int = 0) -> Path:
    """1x28x28 -> Conv(16) -> Relu -> Conv(32, stride 2) -> Relu -> GlobalAveragePool -> Gemm(10):
    what ONNX Runtime puts on its blocked (NCHWc) layout on x86 and quantises to QLinearConv."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(np.float32)

    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w(16, 1, 3, 3), "c1w"), (np.zeros(16, np.float32), "c1b"),
        (w(32, 16, 3, 3), "c2w"), (np.zeros(32, np.float32), "c2b"),
        (w(10, 32), "fw"), (np.zeros(10, np.float32), "fb"), (np.array([-1, 32], np.int64), "shape"))]
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Reshape", ["g", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory) -> Path:
    return convnet(tmp_path_factory.mktemp("conv") / "convnet.onnx")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from edgeprune.quantize import load_calibration

    return load_calibration(CALIBRATION)[:64]


def arm(target, **changes):
    return with_build(target, ort_target_platform="arm", model_format="ort", graph_optimization_level="all", **changes)


def test_ort_for_an_arm_target_has_no_x86_layouts_loads_and_matches_onnx(backend, conv_model, target, images, tmp_path):
    # At level "all" this x86 host lays convolutions out in NCHWc blocks; the ARM graph must not.
    # (Checked on the ONNX-format save of the same optimisation: the .ort file is not inspectable.)
    def domains(t):
        path = backend.build(conv_model, with_build(t, model_format="onnx"), tmp_path / t.build.ort_target_platform).path
        return {n.domain for n in onnx.load(str(path)).graph.node}

    assert "com.microsoft.nchwc" in domains(with_build(target, graph_optimization_level="all"))
    assert "com.microsoft.nchwc" not in domains(arm(target))
    t = arm(target)
    engine = backend.build(conv_model, t, tmp_path / "arm")
    assert engine.path.suffix == ".ort" and engine.path.read_bytes()[4:8] == b"ORTM"
    assert engine.extra["ort_target_platform"] == "arm"

    session = backend.open(engine, t)
    assert session.inner.get_session_options().get_session_config_entry("session.qdqisint8allowed") == "1"
    direct = ort.InferenceSession(str(conv_model), providers=["CPUExecutionProvider"]).run(None, {"x": images})[0]
    np.testing.assert_allclose(session.run(images), direct, rtol=1e-4, atol=1e-4)


def test_int8_build_quantises_on_the_calibration_set_first(backend, conv_model, target, images, tmp_path):
    small = tmp_path / "calib64.npz"
    with np.load(CALIBRATION) as z:
        np.savez(small, x=z["x"][:64], y=z["y"][:64])
    t = with_build(target, precision="int8", calibration=str(small), calibration_method="percentile")
    assert backend.validate(conv_model, t) == []
    engine = backend.build(conv_model, t, tmp_path)
    assert engine.extra["precision"] == "int8" and engine.extra["calibration_method"] == "percentile"
    assert engine.extra["calibration_samples"] == "64" and engine.extra["per_channel"] == "true"
    assert int(engine.extra["quantized_nodes"]) >= 3 and engine.extra["fp32_compute_nodes"] == ""
    assert Path(engine.extra["int8_onnx"]).is_file()
    ops = {n.op_type for n in onnx.load(str(engine.path)).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and "Conv" not in ops     # Q/DQ fused into integer kernels
    direct = ort.InferenceSession(str(conv_model), providers=["CPUExecutionProvider"]).run(None, {"x": images})[0]
    got = backend.open(engine, t).run(images)
    assert not np.array_equal(got, direct)
    assert np.mean(got.argmax(1) == direct.argmax(1)) >= 0.9


def test_int8_ort_for_arm_loads_and_runs(backend, conv_model, target, images, tmp_path):
    t = arm(target, precision="int8", calibration=str(CALIBRATION))
    engine = backend.build(conv_model, t, tmp_path)
    fp32 = backend.open(backend.build(conv_model, arm(target), tmp_path / "fp32"), arm(target))
    got = backend.open(engine, t).run(images)
    assert got.shape == (64, 10) and np.mean(got.argmax(1) == fp32.run(images).argmax(1)) >= 0.9


def test_int8_without_a_usable_calibration_set_is_an_error(backend, conv_model, target, tmp_path):
    assert "needs a calibration set" in backend.validate(conv_model, with_build(target, precision="int8"))[0]
    missing = with_build(target, precision="int8", calibration=str(tmp_path / "none.npz"))
    assert backend.validate(conv_model, missing) == [f"calibration file not found: {tmp_path / 'none.npz'}"]
    with pytest.raises(InputError, match="calibration file not found"):
        backend.build(conv_model, missing, tmp_path)
    wrong = tmp_path / "rgb.npz"
    np.savez(wrong, x=np.zeros((4, 3, 32, 32), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(ShapeError, match=r"calibration data has shape \(4, 3, 32, 32\)") as e:
        backend.build(conv_model, with_build(target, precision="int8", calibration=str(wrong)), tmp_path)
    assert "\n" not in str(e.value)


def test_an_available_provider_that_cannot_run_the_model_is_an_error_not_a_cpu_fallback(backend, model, target, tmp_path):
    # AzureExecutionProvider is in this wheel's available list but runs no ordinary op: ONNX Runtime
    # would quietly run everything on the CPU. Without CPUExecutionProvider in the target, that is refused.
    assert "AzureExecutionProvider" in ort.get_available_providers()
    azure = with_build(target, execution_providers=("AzureExecutionProvider",))
    with pytest.raises(InputError, match="cannot run every node"):
        backend.build(model, azure, tmp_path)
    # Listing the CPU provider too allows it, and the session says which providers it has.
    both = with_build(target, execution_providers=("AzureExecutionProvider", "CPUExecutionProvider"))
    session = backend.open(backend.build(model, both, tmp_path / "both"), both)
    assert session.providers == ["AzureExecutionProvider", "CPUExecutionProvider"]


def test_an_input_type_edgeprune_cannot_feed_is_an_error_naming_it(backend, target, tmp_path):
    # A bfloat16 input has no numpy type: it used to be fed float32 as if nothing were wrong.
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    onnx.save(m, str(tmp_path / "bf16.onnx"))
    engine = backend.build(tmp_path / "bf16.onnx", target, tmp_path / "e")
    with pytest.raises(InputError, match=r"input 'x' has type tensor\(bfloat16\), which edgeprune cannot feed"):
        backend.open(engine, target)


def test_a_bug_while_loading_is_not_turned_into_a_user_error(backend, model, target, tmp_path, monkeypatch):
    engine = backend.build(model, target, tmp_path / "e")

    def broken(*args, **kwargs):
        raise KeyError("edgeprune bug")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    with pytest.raises(KeyError, match="edgeprune bug"):
        backend.open(engine, target)
