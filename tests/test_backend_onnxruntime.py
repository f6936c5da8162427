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
    t = dataclasses.replace(with_build(target, precision="int8"), stack={"onnxruntime": "<1.0"})
    problems = backend.validate(model, t)
    assert any("precision 'int8'" in p for p in problems)
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
