"""validate_onnx finds what would stop a model on a target, one line per layer with the fix, on
real exported models; densify_sparse_initializers keeps the model's outputs bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed
from torch import nn

from edgeprune import api
from edgeprune.backends import get_backend
from edgeprune.data import load_dataset
from edgeprune.errors import InputError
from edgeprune.export import to_onnx_model
from edgeprune.targets import list_targets, load_target
from edgeprune.validation import (
    Problem,
    densify_sparse_initializers,
    errors,
    trt_supported_operators,
    validate_onnx,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, lenet300_ckpt, fmnist_small) -> dict[int, Path]:
    """The trained LeNet-300-100 through edgeprune's export at opset 17 and at 13 (Jetson Nano)."""
    out = tmp_path_factory.mktemp("validation")
    paths = {}
    for opset in (13, 17):
        r = api.export(lenet300_ckpt, out / f"lenet300.op{opset}.onnx", opset=opset, data=fmnist_small)
        assert r.opset == opset and r.parity.ok
        paths[opset] = r.path
    return paths


def with_build(target, **changes):
    return dataclasses.replace(target, build=dataclasses.replace(target.build, **changes))


def test_exported_model_is_clean_for_host_cpu_and_every_jetson(exported):
    jetsons = [t for t in list_targets() if t.hardware.get("family") == "jetson"]
    assert len(jetsons) == 6
    for target in [load_target("host-cpu"), *jetsons]:
        model = exported[min(17, target.stack["max_opset"])]
        assert validate_onnx(model, target) == [], target.name


def test_opset_above_the_target_maximum_names_the_fix(exported):
    problems = validate_onnx(exported[17], load_target("jetson-nano"))
    assert [str(p) for p in problems] == ["model: opset 17 is above the target's max_opset 13; fix: re-export with --opset 13"]


class Wrap(nn.Module):
    """A layer whose export needs ONNX Mod, which TensorRT's parser reads from 8.5 on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return torch.fmod(self.fc(x), 1.0)


def test_operator_outside_the_trt_82_list_is_flagged_naming_the_node(tmp_path):
    path = tmp_path / "wrap.onnx"
    onnx.save(to_onnx_model(Wrap(), (8,), opset=13), str(path))
    mod = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Mod")
    nano = validate_onnx(path, load_target("jetson-nano"))
    assert len(nano) == 1 and nano[0].severity == "error" and nano[0].layer == mod.name
    assert "Mod is not in TensorRT 8.2.1's ONNX operator list" in nano[0].message
    assert "TensorRT >= 8.5" in nano[0].fix and str(nano[0]).startswith(f"{mod.name}: Mod")
    # TensorRT 8.5 (Xavier) imports it; ONNX Runtime runs every standard operator.
    assert validate_onnx(path, load_target("jetson-xavier-nx")) == []
    assert validate_onnx(path, load_target("host-cpu")) == []


def test_operator_lists_grow_with_the_release():
    trt82, trt85, trt103, trt11 = (trt_supported_operators(v) for v in ("8.2.1", "8.5.2", "10.3.0", "11.4.1"))
    assert trt82 < trt85 < trt103 <= trt11
    assert "LayerNormalization" not in trt85 and "LayerNormalization" in trt103
    assert {"Conv", "Gemm", "Relu", "MatMul", "Reshape", "Flatten"} <= trt82
    assert "QLinearConv" not in trt11 and "Xor" not in trt82 and "Xor" in trt85
    with pytest.raises(InputError, match="older than 8.2"):
        trt_supported_operators("7.1.3")


def test_dla_with_a_dynamic_batch_is_flagged(exported):
    orin = load_target("jetson-agx-orin")
    problems = validate_onnx(exported[17], with_build(orin, dla_core=0))
    assert [(p.layer, p.severity) for p in problems] == [("input 'input'", "error")]
    assert "dim 0 ('batch') is dynamic; DLA core 0 builds static shapes only" in problems[0].message
    assert "make_dynamic_shape_fixed --dim_param batch" in problems[0].fix


def test_dla_accepts_the_fixed_shape_model_and_reports_fp32_and_fallback(exported, tmp_path):
    # The fix the problem names: fix the batch dimension.
    model = onnx.load(str(exported[13]))
    make_dim_param_fixed(model.graph, "batch", 1)
    fixed = tmp_path / "static.onnx"
    onnx.save(model, str(fixed))
    xavier = with_build(load_target("jetson-xavier-nx"), dla_core=1)
    problems = validate_onnx(fixed, xavier)
    # The opset-13 export flattens with Flatten, which DLA lacks: it runs on the GPU.
    flatten = next(n.name for n in model.graph.node if n.op_type == "Flatten")
    assert errors(problems) == [] and [p.layer for p in problems] == [flatten]
    assert "Flatten cannot run on DLA core 1; it runs on the GPU" in str(problems[0])
    strict = validate_onnx(fixed, with_build(xavier, gpu_fallback=False, precision="fp32"))
    assert {(p.layer, p.severity) for p in strict} == {("model", "error"), (flatten, "error")}
    assert any("runs FP16 and INT8 only" in p.message and "precision" in p.fix for p in strict)
    assert any("gpu_fallback = true" in p.fix for p in strict)


def test_trt_11_needs_reduced_precision_in_the_onnx(exported, tmp_path):
    orin = load_target("jetson-agx-orin")
    jp7 = dataclasses.replace(orin, stack={**orin.stack, "tensorrt": "11.4.1"})
    problems = validate_onnx(exported[17], jp7)
    assert len(problems) == 1 and "no INT8 calibrator" in problems[0].message
    fp16 = validate_onnx(exported[17], with_build(jp7, precision="fp16"))
    assert len(fp16) == 1 and "no FP16 tensors" in fp16[0].message and "AutoCast" in fp16[0].fix
    assert validate_onnx(exported[17], with_build(jp7, precision="fp32")) == []
    # The same model with FP16 weights (and FP16 I/O) is what TensorRT 11 builds in FP16.
    half = onnx.load(str(exported[17]))
    for t in half.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in [*half.graph.input, *half.graph.output, *half.graph.value_info]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(half, str(tmp_path / "half.onnx"))
    assert validate_onnx(tmp_path / "half.onnx", with_build(jp7, precision="fp16")) == []


def test_qdq_zero_point_must_be_zero_for_tensorrt(tmp_path):
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="quant_in"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dequant_in")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [scale, zp])
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    problems = validate_onnx(path, load_target("jetson-orin-nano"))
    assert [p.layer for p in problems] == ["quant_in", "dequant_in"]
    assert all("non-zero zero point" in p.message and "symmetric" in p.fix for p in problems)
    assert validate_onnx(path, load_target("host-cpu")) == []


def test_checker_problem_names_the_node(exported, tmp_path):
    model = onnx.load(str(exported[17]))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = next(t for t in model.graph.initializer if t.name == gemm.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:, :-1].copy(), w.name))  # K no longer fits
    del model.graph.value_info[:]  # else the checker reports the weight's recorded shape, naming no node
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    problems = validate_onnx(broken, load_target("host-cpu"))
    assert len(problems) == 1 and problems[0].layer == gemm.name and "onnx.checker" in problems[0].message
    assert problems[0].fix and "\n" not in str(problems[0])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    assert validate_onnx(garbage, load_target("host-cpu"))[0].layer == "model"
    with pytest.raises(InputError, match="not found"):
        validate_onnx(tmp_path / "missing.onnx", load_target("host-cpu"))


def to_sparse(model: onnx.ModelProto, keep: float = 0.2) -> onnx.ModelProto:
    """Magnitude-prune every Gemm weight to `keep` and store it as a sparse initializer (INT64
    indices, as onnx.checker requires): linear indices for the first, coordinates for the rest."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {n.input[1] for n in out.graph.node if n.op_type == "Gemm"}
    dense = [t for t in out.graph.initializer if t.name not in weights]
    for i, t in enumerate(t for t in out.graph.initializer if t.name in weights):
        w = numpy_helper.to_array(t).copy()
        w[np.abs(w) < np.quantile(np.abs(w), 1 - keep)] = 0.0
        nz = np.flatnonzero(w)
        indices = nz if i == 0 else np.stack(np.unravel_index(nz, w.shape), axis=1)
        out.graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(w.reshape(-1)[nz], t.name), numpy_helper.from_array(indices.astype(np.int64)),
            list(w.shape)))
    del out.graph.initializer[:]
    out.graph.initializer.extend(dense)
    return out


def test_sparse_initializers_are_a_note_and_densify_to_identical_outputs(exported, tmp_path):
    sparse = to_sparse(onnx.load(str(exported[17])))
    names = [s.values.name for s in sparse.graph.sparse_initializer]
    sparse_path = tmp_path / "sparse.onnx"
    onnx.save(sparse, str(sparse_path))
    problems = validate_onnx(sparse_path, load_target("jetson-orin-nano"))
    assert errors(problems) == [] and [p.layer for p in problems] == names
    assert all(str(p).startswith(f"note: {p.layer}: sparse initializer: densified before TensorRT") for p in problems)
    assert validate_onnx(sparse_path, load_target("host-cpu")) == []
    # a note does not stop a build: the TensorRT backend's deploy densifies them itself
    assert get_backend("tensorrt").validate(sparse_path, load_target("jetson-orin-nano")) == []

    dense = densify_sparse_initializers(sparse)
    assert not dense.graph.sparse_initializer and len(sparse.graph.sparse_initializer) == 3  # input untouched
    assert set(names) <= {t.name for t in dense.graph.initializer}
    onnx.checker.check_model(dense, full_check=True)
    x = load_dataset("fashion-mnist", split="test", limit=256).x
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"input": x})[0]
    np.testing.assert_array_equal(run(dense), run(sparse))
    dense_path = tmp_path / "dense.onnx"
    onnx.save(dense, str(dense_path))
    assert validate_onnx(dense_path, load_target("jetson-orin-nano")) == []


def test_constant_sparse_value_is_densified():
    values = numpy_helper.from_array(np.array([2.0, -1.0], np.float32), "c")
    indices = numpy_helper.from_array(np.array([1, 4], np.int64))
    const = helper.make_node("Constant", [], ["c"], sparse_value=helper.make_sparse_tensor(values, indices, [2, 3]))
    add = helper.make_node("Add", ["x", "c"], ["y"])
    graph = helper.make_graph([const, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = densify_sparse_initializers(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    value = next(a for a in model.graph.node[0].attribute)
    assert value.name == "value"
    np.testing.assert_array_equal(numpy_helper.to_array(value.t), [[0, 2, 0], [0, -1, 0]])


def test_problem_is_one_line_naming_layer_and_fix():
    p = Problem("conv1", "Foo is not supported", "replace it")
    assert str(p) == "conv1: Foo is not supported; fix: replace it"
    assert str(Problem("w", "densified", severity="note")) == "note: w: densified"
    assert p.to_dict() == {"layer": "conv1", "message": "Foo is not supported", "fix": "replace it", "severity": "error"}
