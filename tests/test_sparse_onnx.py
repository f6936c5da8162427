"""Sparse weights in ONNX (edgeprune/sparse_onnx.py) and `export --sparse-weights`."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune import api
from edgeprune.cli import _sizes_line, main
from edgeprune.errors import InputError
from edgeprune.onnx_stats import model_stats, xz_size
from edgeprune.pruning import PruneSpec
from edgeprune.sparse_onnx import Sizes, sparse_export, sparse_tensor, sparsify


@pytest.fixture(scope="module")
def exports(tmp_path_factory, lenet300_ckpt, fmnist_small):
    """lenet300 pruned to 90 % and fine-tuned on Fashion-MNIST, exported dense (API) and with sparse
    weights (CLI, --json: the ExportResult as a user gets it)."""
    d = tmp_path_factory.mktemp("sparse")
    api.compress(lenet300_ckpt, PruneSpec(sparsity=0.9), d / "p.pt", data=fmnist_small, finetune_epochs=0.3,
                 progress=False)
    dense = api.export(d / "p.pt", d / "dense.onnx", data=fmnist_small)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["export", str(d / "p.pt"), "--sparse-weights", "--data", "fashion-mnist", "-o",
                     str(d / "sparse.onnx"), "--json"]) == 0
    return dense, json.loads(text.getvalue())


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_sparse_file_passes_the_full_checker_and_matches_the_dense_one_exactly(exports, fmnist_small):
    dense, sparse = exports
    model = onnx.load(sparse["path"])
    onnx.checker.check_model(model, full_check=True)
    assert sum(n.op_type == "Constant" and n.attribute[0].name == "sparse_value" for n in model.graph.node) >= 2
    x = fmnist_small.test().x
    assert np.array_equal(run(dense.path, x), run(sparse["path"], x))
    assert sparse["parity"]["top1_agreement"] == 1.0


def test_sizes_are_the_real_file_sizes_side_by_side(exports):
    dense, sparse = exports
    sz = Sizes(**{k: v for k, v in sparse["sizes"].items() if not k.startswith("smallest")})
    raw_dense, raw_sparse = dense.path.read_bytes(), Path(sparse["path"]).read_bytes()
    assert (sz.dense, sz.sparse) == (len(raw_dense), len(raw_sparse)) == (dense.size_bytes, sparse["size_bytes"])
    assert (sz.dense_xz, sz.sparse_xz) == (xz_size(raw_dense), xz_size(raw_sparse))
    # at 90 % zeros: COO with int64 indices is ~0.3x the dense file; compressed forms smaller still
    assert 0.25 < sz.ratio("sparse") < 0.4
    assert sz.smallest in ("dense_xz", "sparse_xz") and sz.ratio(sz.smallest) <= 0.2
    assert dense.sizes is None
    line = _sizes_line(sz)   # what the CLI prints without --json
    assert f"dense {sz.dense:,}, sparse {sz.sparse:,}, dense xz {sz.dense_xz:,}, sparse xz {sz.sparse_xz:,}" in line
    assert f"smallest: {sz.smallest.replace('_', ' ')} ({sz.ratio(sz.smallest):.3f}x the dense file)" in line


def test_stats_of_the_sparse_file_count_what_the_dense_file_holds(exports):
    dense, sparse = exports
    a, b = model_stats(dense.path), model_stats(sparse["path"])
    assert (a.params, a.nonzero_params, a.macs) == (b.params, b.nonzero_params, b.macs)


def graph_with(tensors: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """x -> Add(t1) -> Add(t2) ... -> y over 1-D tensors of the same length."""
    n = len(next(iter(tensors.values())))
    nodes, prev = [], "x"
    for i, name in enumerate(tensors):
        nodes.append(helper.make_node("Add", [prev, name], [f"h{i}"]))
        prev = f"h{i}"
    nodes[-1].output[0] = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
                          initializer=[numpy_helper.from_array(a, k) for k, a in tensors.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def with_zeros(n: int, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32) + 3.0         # no accidental zeros
    a[rng.permutation(n)[: round(fraction * n)]] = 0.0
    return a


def test_sparse_form_is_used_only_above_break_even():
    tensors = {"s50": with_zeros(4000, 0.5, 0), "s60": with_zeros(4000, 0.6, 1), "s75": with_zeros(4000, 0.75, 2),
               "s95": with_zeros(4000, 0.95, 3), "zero": np.zeros(4000, np.float32)}
    model = graph_with(tensors)
    dense = model.SerializeToString()
    x = np.random.default_rng(4).standard_normal((5, 4000)).astype(np.float32)
    data, sizes = sparse_export(model, dense, x)
    converted = [n.output[0] for n in onnx.load_from_string(data).graph.node if n.op_type == "Constant"]
    # int64 indices: 12 bytes per nonzero against 4 per dense element -> pays above ~67 % zeros
    assert sorted(converted) == ["s75", "s95", "zero"] and sizes.sparse_tensors == 3
    assert sizes.sparse < sizes.dense


def test_onnx_full_check_rejects_graph_sparse_initializers_hence_constants():
    # why sparse_onnx writes Constant(sparse_value): the spec's sparse_initializer form is typed
    # sparse_tensor(float) by ONNX shape inference, which no dense op accepts
    a = with_zeros(400, 0.9, 0)
    model = graph_with({"w": a})
    del model.graph.initializer[:]
    model.graph.sparse_initializer.append(sparse_tensor(a, "w"))
    onnx.checker.check_model(model)
    with pytest.raises(Exception, match="sparse_tensor"):
        onnx.checker.check_model(model, full_check=True)
    onnx.checker.check_model(sparsify(graph_with({"w": a}))[0], full_check=True)


def test_old_opset_is_a_one_line_error():
    with pytest.raises(InputError, match="opset >= 11"):
        sparsify(graph_with({"w": with_zeros(100, 0.9, 0)}, opset=10))
