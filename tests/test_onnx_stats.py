"""Parameter, zero and MAC counts of ONNX files match what the architecture says they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.errors import InputError
from edgeprune.onnx_stats import model_stats, read_metadata

# x[N,3,16,16] -Conv(8,3x3,pad 1)-> [N,8,16,16] -Relu-> -Conv(8,3x3,stride 2,groups 2)-> [N,8,8,8]
# -Flatten-> [N,512] -Gemm(transB, 512->32)-> [N,32] -MatMul(32x10)-> [N,10]
CONV1_MACS = (8 * 16 * 16) * 3 * 3 * 3
CONV2_MACS = (8 * 8 * 8) * (8 // 2) * 3 * 3
GEMM_MACS = 512 * 32
MATMUL_MACS = 32 * 10
PARAMS = (8 * 3 * 9 + 8) + (8 * 4 * 9 + 8) + (32 * 512 + 32) + 32 * 10


def conv_gemm_model(path: Path, zero_fraction: float = 0.0, seed: int = 0, metadata: dict | None = None) -> Path:
    rng = np.random.default_rng(seed)

    def w(*shape):
        a = rng.standard_normal(shape).astype(np.float32)
        if zero_fraction:
            a[rng.random(shape) < zero_fraction] = 0.0
        return a

    inits = {
        "c1.w": w(8, 3, 3, 3), "c1.b": w(8),
        "c2.w": w(8, 4, 3, 3), "c2.b": w(8),
        "fc.w": w(32, 512), "fc.b": w(32),
        "out.w": w(32, 10),
        "shape_const": np.array([1, 2], dtype=np.int64),  # not a parameter: integer initializer
    }
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["h2"], pads=[1, 1, 1, 1], strides=[2, 2], group=2),
        helper.make_node("Flatten", ["h2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "out.w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "convgemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_macs_equal_the_analytic_count_of_a_conv_gemm_model(tmp_path):
    st = model_stats(conv_gemm_model(tmp_path / "m.onnx"))
    assert st.macs == CONV1_MACS + CONV2_MACS + GEMM_MACS + MATMUL_MACS
    assert st.params == PARAMS == st.nonzero_params
    assert st.opset == 18
    assert st.size_bytes == (tmp_path / "m.onnx").stat().st_size


def test_macs_of_a_torch_exported_model(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    path = tmp_path / "t.onnx"
    prog = torch.onnx.export(
        model.eval(), (torch.randn(2, 1, 8, 8),), str(path), dynamo=True, opset_version=18, external_data=False,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False,
    )
    if prog is not None and not path.exists():
        prog.save(str(path))
    st = model_stats(path)
    assert st.macs == 8 * 64 * 9 + 512 * 10
    assert st.params == sum(p.numel() for p in model.parameters())


def test_zeros_shrink_only_the_compressed_size(tmp_path):
    dense = model_stats(conv_gemm_model(tmp_path / "dense.onnx"))
    sparse = model_stats(conv_gemm_model(tmp_path / "sparse.onnx", zero_fraction=0.9))
    assert sparse.params == dense.params and sparse.macs == dense.macs
    assert 0.05 < sparse.nonzero_params / sparse.params < 0.15
    assert 0.85 < sparse.sparsity < 0.95
    # The raw file is as large as the dense one; only a compressor sees the zeros.
    assert abs(sparse.size_bytes - dense.size_bytes) < 0.01 * dense.size_bytes
    assert sparse.size_xz_bytes < 0.5 * dense.size_xz_bytes
    assert dense.size_xz_bytes < dense.size_bytes * 1.01


def test_metadata_is_read_back(tmp_path):
    meta = {"edgeprune.method": "magnitude", "edgeprune.sparsity": "0.900000", "edgeprune.granularity": "unstructured"}
    assert read_metadata(conv_gemm_model(tmp_path / "m.onnx", metadata=meta)) == meta
    assert read_metadata(conv_gemm_model(tmp_path / "plain.onnx")) == {}


def test_missing_and_corrupt_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        model_stats(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="not a readable ONNX model"):
        model_stats(bad)


def test_macs_that_cannot_be_counted_are_unknown_not_zero(tmp_path):
    # The Gemm's input comes out of an operator ONNX shape inference knows nothing of, so its
    # MACs cannot be counted; the model's total is unknown (None), and the node is named.
    model = onnx.load(str(conv_gemm_model(tmp_path / "m.onnx")))
    g = model.graph
    flatten = next(n for n in g.node if n.op_type == "Flatten")
    flatten.op_type, flatten.domain, flatten.name = "MysteryFlatten", "custom.ops", "mystery"
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    gemm.name = "fc_gemm"
    model.opset_import.append(helper.make_opsetid("custom.ops", 1))
    onnx.save(model, str(tmp_path / "custom.onnx"))
    st = model_stats(tmp_path / "custom.onnx")
    assert st.macs is None and "fc_gemm" in st.uncounted
    # the convolutions before the unknown op still have shapes: they are counted, not listed
    assert not any(n.startswith("Conv") for n in st.uncounted) and len(st.uncounted) == 2   # Gemm and MatMul
    assert model_stats(tmp_path / "m.onnx").uncounted == []


def test_a_model_whose_macs_cannot_be_counted_is_named_in_the_profile_notes(tmp_path):
    from edgeprune.profiling import uncounted_notes

    model = onnx.load(str(conv_gemm_model(tmp_path / "m.onnx")))
    next(n for n in model.graph.node if n.op_type == "Flatten").domain = "custom.ops"
    model.opset_import.append(helper.make_opsetid("custom.ops", 1))
    onnx.save(model, str(tmp_path / "custom.onnx"))
    sides = {"dense": (tmp_path / "m.onnx", model_stats(tmp_path / "m.onnx")),
             "pruned": (tmp_path / "custom.onnx", model_stats(tmp_path / "custom.onnx"))}
    notes = uncounted_notes(sides)
    assert len(notes) == 1 and "pruned model custom.onnx could not be counted" in notes[0]
    assert "MAC ratio are unknown" in notes[0]
