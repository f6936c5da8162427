"""The weighted layers of an ONNX graph (Conv, Gemm, MatMul) with their weights as arrays.

Weights are returned in one canonical layout, `[out, reduction, *kernel]` (PyTorch's Linear and
Conv layout), whatever form the file stores them in: a plain or sparse initializer, a `Constant`
node (`value` or `sparse_value`), a `Gemm` B with or without `transB`, a `MatMul` B of shape
`[K, N]`, or the integer input of a `DequantizeLinear` (Q/DQ models: with the symmetric zero point
0 that TensorRT requires, zeros stay zeros). So the 2:4 checker and `explain` read pruned,
sparse-weight and INT8 exports alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

LAYER_OPS = ("Conv", "Gemm", "MatMul")
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
             "MatMulInteger", "DynamicQuantizeLinear")


@dataclass
class OnnxLayer:
    """One weighted node: `weight` in `[out, reduction, *kernel]` layout; `name` is the weight's
    tensor name (stable across exports of the same architecture), `node` the node's output name."""

    name: str
    op: str
    node: str
    weight: np.ndarray
    quantized: bool = False   # the weight reaches the node through a DequantizeLinear

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def reduction(self) -> int:
        """Length of the axis a dot product runs over: Conv input channels (per group), Linear inputs."""
        return int(self.weight.shape[1])

    @property
    def kernel(self) -> int:
        return int(np.prod(self.weight.shape[2:], dtype=np.int64))


def constant_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant tensor of the main graph by name: initializers, sparse initializers and
    Constant nodes (dense or sparse), densified."""
    g = model.graph
    out = {init.name: numpy_helper.to_array(init) for init in g.initializer}
    for sparse in g.sparse_initializer:
        out[sparse.values.name] = _dense(sparse)
    for node in g.node:
        if node.op_type != "Constant":
            continue
        for att in node.attribute:
            if att.name == "value" and att.HasField("t"):
                out[node.output[0]] = numpy_helper.to_array(att.t)
            elif att.name == "sparse_value" and att.HasField("sparse_tensor"):
                out[node.output[0]] = _dense(att.sparse_tensor)
    return out


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(int(np.prod(dims, dtype=np.int64)), dtype=values.dtype)
    if indices.ndim == 2:   # [NNZ, rank] coordinates rather than linear indices
        indices = np.ravel_multi_index(tuple(indices.T), dims)
    dense[indices] = values
    return dense.reshape(dims)


def weighted_layers(model: onnx.ModelProto) -> list[OnnxLayer]:
    """Conv / Gemm / MatMul nodes whose weight input is a constant, in graph order."""
    consts = constant_arrays(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    layers = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        name, quantized = node.input[1], False
        dq = producers.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in consts:
            name, quantized = dq.input[0], True
        w = consts.get(name)
        if w is None or w.ndim < 2:
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w = w if trans_b else w.T          # Gemm B is [K, N] unless transB
        elif node.op_type == "MatMul":
            if w.ndim != 2:
                continue
            w = w.T                            # MatMul B is [K, N]
        layers.append(OnnxLayer(name=name, op=node.op_type, node=node.output[0], weight=w, quantized=quantized))
    return layers


def quant_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """How many quantization-related nodes of each type the graph has (empty for a float model)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANT_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
