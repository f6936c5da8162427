"""What an ONNX file holds: parameter counts, zeros, multiply-accumulates, size raw and xz.

MACs are what a dense backend executes: ONNX Runtime and TensorRT multiply by zero weights just
like by any other, so a 90 %-zero model has the dense model's MACs. Only physically removed
neurons/channels lower them.
"""

from __future__ import annotations

import lzma
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeprune.errors import InputError

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}
COMPUTE_OPS = ("Conv", "FusedConv", "ConvInteger", "QLinearConv", "ConvTranspose", "Gemm", "FusedGemm",
               "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul")
# Same preset as the `xz` command line (-6), so users can reproduce the figure with `xz -k`.
XZ_PRESET = 6


@dataclass
class ModelStats:
    """`params`: elements of float initializers (zeros included); `nonzero_params`: the nonzero
    ones; `macs`: multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul at batch 1 (symbolic
    dims taken as 1), None when some of them could not be counted (`uncounted` names those
    nodes); `size_bytes`: the file; `size_xz_bytes`: the file compressed with xz -6."""

    params: int
    nonzero_params: int
    macs: int | None
    size_bytes: int
    size_xz_bytes: int
    opset: int
    uncounted: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Fraction of float parameters that are exactly zero."""
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def model_stats(onnx_path: str | Path) -> ModelStats:
    path = Path(onnx_path)
    model = _load(path)
    params, nonzero = count_params(model)
    raw = path.read_bytes()
    per_node = node_macs(model)
    return ModelStats(
        params=params,
        nonzero_params=nonzero,
        macs=_total(per_node),
        size_bytes=len(raw),
        size_xz_bytes=xz_size(raw),
        opset=opset_of(model),
        uncounted=[_names(model).get(k) or k for k, v in per_node.items() if v is None],
    )


def xz_size(data: bytes) -> int:
    """Bytes of ``data`` compressed as `xz -6` would."""
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=XZ_PRESET))


def read_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The model's `metadata_props` (the exporter writes `edgeprune.method`, `edgeprune.sparsity`, ...)."""
    model = _load(Path(onnx_path), external=False)
    return {p.key: p.value for p in model.metadata_props}


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def count_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(elements, nonzero elements) over float initializers and sparse initializers or constants."""
    total = nonzero = 0
    for init in model.graph.initializer:
        if init.data_type not in FLOAT_TYPES:
            continue
        arr = numpy_helper.to_array(init)
        total += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    # sparse weights: sparse initializers, and the Constant(sparse_value) nodes `export --sparse-weights` writes
    sparse_constants = [att.sparse_tensor for node in model.graph.node if node.op_type == "Constant"
                        for att in node.attribute if att.name == "sparse_value"]
    for sparse in list(model.graph.sparse_initializer) + sparse_constants:
        if sparse.values.data_type not in FLOAT_TYPES:
            continue
        total += int(np.prod(sparse.dims, dtype=np.int64))
        nonzero += int(np.count_nonzero(numpy_helper.to_array(sparse.values)))
    return total, nonzero


def count_macs(model: onnx.ModelProto) -> int | None:
    """MACs at batch 1 of the compute-bound ops, from ONNX shape inference.

    Conv: output elements x Cin/groups x kernel; ConvTranspose: input elements x Cout/groups x
    kernel; Gemm/MatMul: output elements x K. Fused ONNX Runtime variants count like their base
    op. None when the shapes of any of them cannot be inferred: a partial count would bend every
    ratio taken with it.
    """
    return _total(node_macs(model))


def _total(per_node: dict[str, int | None]) -> int | None:
    if any(v is None for v in per_node.values()):
        return None
    return int(sum(per_node.values()))


def node_macs(model: onnx.ModelProto) -> dict[str, int | None]:
    """`count_macs` per compute node, keyed by the node's first output name; None for a node whose
    shapes could not be inferred."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference raises many types; the nodes it could not reach are None below
        inferred = model
    shapes = _shape_table(inferred)

    macs: dict[str, int | None] = {}
    for node in inferred.graph.node:
        op = node.op_type
        key = node.output[0]
        if op in COMPUTE_OPS:
            macs[key] = None     # until its shapes are known
        if op in ("Conv", "FusedConv", "ConvInteger", "QLinearConv"):
            w_idx = 3 if op == "QLinearConv" else 1
            out = shapes.get(node.output[0])
            w = shapes.get(node.input[w_idx]) if len(node.input) > w_idx else None
            if out is not None and w is not None:
                macs[key] = _prod(out) * _prod(w[1:])
        elif op == "ConvTranspose":
            x = shapes.get(node.input[0])
            w = shapes.get(node.input[1])
            if x is not None and w is not None:
                macs[key] = _prod(x) * _prod(w[1:])
        elif op in ("Gemm", "FusedGemm"):
            a = shapes.get(node.input[0])
            out = shapes.get(node.output[0])
            if a is not None and out is not None and len(a) == 2:
                trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
                k = a[0] if trans_a else a[1]
                macs[key] = _prod(out) * k
        elif op in ("MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul"):
            a = shapes.get(node.input[0])
            out = shapes.get(node.output[0])
            if a is not None and out is not None and len(a) >= 1:
                trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
                k = a[-2] if (trans_a and len(a) >= 2) else a[-1]
                macs[key] = _prod(out) * k
    return macs


def _names(model: onnx.ModelProto) -> dict[str, str]:
    """Node name by first output (the key of `node_macs`)."""
    return {n.output[0]: n.name for n in model.graph.node if n.output}


def _shape_table(model: onnx.ModelProto) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        # Symbolic and unknown dims (the batch) count as 1: MACs are reported at batch 1.
        table[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
    for init in g.initializer:
        table[init.name] = list(init.dims)
    for sparse in g.sparse_initializer:
        table[sparse.values.name] = list(sparse.dims)
    for node in g.node:
        if node.op_type == "Constant":
            for att in node.attribute:
                if att.name == "value" and att.HasField("t"):
                    table[node.output[0]] = list(att.t.dims)
                elif att.name == "sparse_value" and att.HasField("sparse_tensor"):
                    table[node.output[0]] = list(att.sparse_tensor.dims)
    return table


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _load(path: Path, external: bool = True) -> onnx.ModelProto:
    if not path.is_file():
        raise InputError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=external)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
