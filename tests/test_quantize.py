"""Static INT8 Q/DQ quantisation on a real CNN trained on Fashion-MNIST, calibrated on the
committed calibration set, run through real ONNX Runtime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgeprune import api
from edgeprune.errors import InputError, ShapeError
from edgeprune.fileio import file_digest
from edgeprune.quantize import METHODS, QuantizeResult, calibration_path, load_calibration, quantize_qdq

from .conftest import CALIBRATION



@pytest.fixture(scope="module")
def cnn(lenet5_ckpt, tmp_path_factory) -> Path:
    """The conftest LeNet-5 (trained on a Fashion-MNIST subset) as ONNX."""
    out = tmp_path_factory.mktemp("quant") / "lenet5.onnx"
    api.export(lenet5_ckpt, out, data=api.DataOptions("fashion-mnist", test_limit=256))
    return out


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return load_calibration(CALIBRATION)


@pytest.fixture(scope="module")
def test_set():
    return api.DataOptions("fashion-mnist", test_limit=1000).test()


@pytest.fixture(scope="module")
def minmax(cnn, calib, tmp_path_factory) -> QuantizeResult:
    return quantize_qdq(cnn, tmp_path_factory.mktemp("q") / "int8.onnx", calib, method="minmax")


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_the_model_gets_quantize_dequantize_nodes_and_per_channel_weight_scales(cnn, minmax):
    model = onnx.load(str(minmax.path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 10
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = dq_of[conv.input[1]]                      # the weight arrives dequantised ...
        w, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert w.dtype == np.int8                       # ... from int8 ...
        assert scale.shape == (w.shape[0],)             # ... with one scale per output channel
        assert len(set(np.round(scale, 12))) > 1
    fp32_convs = [n.name for n in onnx.load(str(cnn)).graph.node if n.op_type == "Conv"]
    assert set(fp32_convs) <= set(minmax.quantized) and minmax.excluded == []
    assert minmax.per_channel and minmax.method == "minmax" and minmax.calibration_samples == 512


def test_int8_accuracy_stays_close_to_fp32(cnn, minmax, test_set):
    x, y = test_set.x, test_set.y
    lf, lq = logits(cnn, x), logits(minmax.path, x)
    acc_f, acc_q = np.mean(lf.argmax(1) == y), np.mean(lq.argmax(1) == y)
    assert acc_f > 0.6                                  # the model learned something worth keeping
    # A tiny model trained for three epochs on 3000 images: a loose bound, 3 points on 1000 images.
    assert acc_f - acc_q <= 0.03
    assert np.mean(lf.argmax(1) == lq.argmax(1)) >= 0.93
    assert not np.array_equal(lf, lq)                   # it really runs in int8


# "distribution" is onnxruntime's calibrator for FP8 (mean/std of a histogram); for INT8 it keeps the
# whole histogram range, which costs resolution: it runs, but agrees less with fp32.
@pytest.mark.parametrize("method, min_agreement", [("minmax", 0.85), ("entropy", 0.85), ("percentile", 0.85),
                                                    ("distribution", 0.4)])
def test_each_calibration_method_runs(cnn, calib, test_set, method, min_agreement, tmp_path, capsys):
    res = quantize_qdq(cnn, tmp_path / f"{method}.onnx", calib[:64], method=method)
    assert res.method == method and res.calibration_samples == 64 and res.path.is_file()
    x = test_set.x[:300]
    agree = np.mean(logits(cnn, x).argmax(1) == logits(res.path, x).argmax(1))
    assert agree >= min_agreement
    assert capsys.readouterr().out == ""             # onnxruntime's calibration prints are kept off stdout


def test_every_target_calibration_method_is_known():
    from edgeprune.targets import CALIBRATION_METHODS

    assert set(CALIBRATION_METHODS) == set(METHODS)


def test_first_and_last_layers_can_stay_fp32(cnn, calib, tmp_path):
    res = quantize_qdq(cnn, tmp_path / "x.onnx", calib[:64], exclude_first=True, exclude_last=True)
    model = onnx.load(str(res.path))
    compute = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert res.excluded == [compute[0].name, compute[-1].name]
    float_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert compute[0].input[1] in float_inits and compute[-1].input[1] in float_inits
    assert compute[1].input[1] not in float_inits


def test_source_is_untouched_and_output_written_atomically(cnn, calib, tmp_path):
    before = file_digest(cnn)
    res = quantize_qdq(cnn, tmp_path / "sub" / "q.onnx", calib[:32])
    assert file_digest(cnn) == before
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["q.onnx"]
    assert res.seconds > 0


def test_wrong_calibration_shape_is_a_one_line_error(cnn, tmp_path):
    with pytest.raises(ShapeError, match=r"calibration data has shape \(8, 3, 32, 32\)") as e:
        quantize_qdq(cnn, tmp_path / "q.onnx", np.zeros((8, 3, 32, 32), np.float32))
    assert "\n" not in str(e.value)
    with pytest.raises(ShapeError, match="float images"):
        quantize_qdq(cnn, tmp_path / "q.onnx", np.zeros((8, 1, 28, 28), np.uint8))
    assert not (tmp_path / "q.onnx").exists()


def test_bad_options_are_user_errors(cnn, calib, tmp_path):
    with pytest.raises(InputError, match="unknown calibration method 'kl'"):
        quantize_qdq(cnn, tmp_path / "q.onnx", calib, method="kl")
    with pytest.raises(InputError, match="unknown quantisation option"):
        quantize_qdq(cnn, tmp_path / "q.onnx", calib, activation_bits=4)
    with pytest.raises(InputError, match="not found"):
        quantize_qdq(tmp_path / "none.onnx", tmp_path / "q.onnx", calib)
    with pytest.raises(InputError, match="calibration file not found"):
        load_calibration(tmp_path / "none.npz")


def test_calibration_paths_resolve_against_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert calibration_path("calibration/fmnist.npz") == CALIBRATION
    assert calibration_path(str(CALIBRATION)) == CALIBRATION
    x = load_calibration(calibration_path("calibration/fmnist.npz"))
    assert x.shape == (512, 1, 28, 28) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_a_quantisation_that_quantises_nothing_is_an_error(cnn, calib, tmp_path):
    # A graph of operators onnxruntime does not quantise (Abs) gets no QuantizeLinear node.
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Abs", ["x"], ["y"])], "abs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 28, 28])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "abs.onnx"))
    with pytest.raises(InputError, match="quantised nothing: onnxruntime found no operator to quantise among Abs"):
        quantize_qdq(tmp_path / "abs.onnx", tmp_path / "abs.int8.onnx", calib[:64])
    # and a real CNN with every compute node excluded quantises nothing either
    names = [n.name for n in onnx.load(str(cnn)).graph.node]
    with pytest.raises(InputError, match=r"quantised nothing.*excluded"):
        quantize_qdq(cnn, tmp_path / "none.int8.onnx", calib[:64], preprocess=False, nodes_to_exclude=names)
    assert not (tmp_path / "abs.int8.onnx").exists() and not (tmp_path / "none.int8.onnx").exists()
    assert not list(tmp_path.glob(".*tmp*"))
