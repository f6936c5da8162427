"""Random MLPs of known cost, written straight to ONNX: N x 1 x 28 x 28 (Fashion-MNIST-shaped)
-> Reshape -> (MatMul + Add + Relu)... -> 10 logits. Their MACs and weight bytes follow from the
widths alone, so a measured latency or memory ratio has a known answer to match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Medium-sized on purpose: profiling also xz-compresses both files, and random weights compress
# at about 1 MB/s on this machine.
BIG = (784, 576, 576, 10)       # 789 k MACs per image, 3.0 MB of weights
SMALL = (784, 32, 32, 10)       # 26 k MACs per image (1/30), 0.1 MB of weights


def mlp_onnx(path: Path, widths: tuple[int, ...], seed: int = 0, always: int | None = None) -> Path:
    """`always`: the last layer's weights are zero and its bias picks that class, so the model
    answers `always` for every image (an accuracy known in advance) at the same cost."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([-1, widths[0]], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["h"])]
    prev = "h"
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        last = i == len(widths) - 2
        w = (rng.standard_normal((a, b)) / a**0.5).astype(np.float32)
        bias = np.zeros(b, np.float32)
        if last and always is not None:
            w[:] = 0.0
            bias[always] = 1.0
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["logits" if last else f"a{i}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def macs(widths: tuple[int, ...]) -> int:
    """Multiply-accumulates per image."""
    return sum(a * b for a, b in zip(widths, widths[1:]))


def weight_mb(widths: tuple[int, ...]) -> float:
    return 4 * sum(a * b + b for a, b in zip(widths, widths[1:])) / 2**20
