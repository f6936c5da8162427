"""Sparse weights in ONNX: zero-rich weights stored as `SparseTensorProto`, and honest file sizes.

Each float initializer whose sparse form is smaller than its dense form becomes a `Constant` node
with a `sparse_value` (values + linear INT64 indices, ascending), feeding the same name. With INT64
indices a nonzero costs 4 + 8 bytes against 4 per dense fp32 element, so this only pays above
about 67 % zeros (DEPLOY.md §5.4); the choice is made per tensor by comparing serialized bytes.

Why a Constant and not `graph.sparse_initializer`: ONNX's own strict shape inference types a sparse
initializer as `sparse_tensor(float)`, which Conv/Gemm/MatMul do not accept, so such a model fails
`onnx.checker.check_model(full_check=True)` ("B typestr: T, has unsupported type:
sparse_tensor(float)"); a `Constant` with `sparse_value` outputs a dense tensor and passes (opset
>= 11). ONNX Runtime loads both the same way: it densifies sparse constants at load, so runtime
memory and speed are those of the dense model (DEPLOY.md §5.2). TensorRT's parser reads neither:
export dense for TensorRT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeprune.errors import InputError, ParityError
from edgeprune.onnx_stats import FLOAT_TYPES, opset_of, xz_size

MIN_OPSET = 11          # Constant's sparse_value attribute
ZSTD_LEVEL = 19


def sparse_tensor(array: np.ndarray, name: str) -> onnx.SparseTensorProto:
    """COO form of ``array``: nonzero values and their linear INT64 indices (what onnx.checker requires)."""
    flat = array.reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int64)
    return helper.make_sparse_tensor(numpy_helper.from_array(flat[idx], name),
                                     numpy_helper.from_array(idx, f"{name}.indices"), list(array.shape))


def sparsify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every float initializer stored sparse where that is smaller.

    Returns the copy and the names of the tensors converted. Initializers that are also graph inputs
    (overridable at run time) stay as they are.
    """
    if opset_of(model) < MIN_OPSET:
        raise InputError(f"sparse weights need opset >= {MIN_OPSET} (Constant sparse_value); this model has "
                         f"opset {opset_of(model)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inputs = {i.name for i in g.input}
    keep, constants = [], []
    for init in g.initializer:
        if init.data_type in FLOAT_TYPES and init.name not in inputs:
            array = numpy_helper.to_array(init)
            node = helper.make_node("Constant", [], [init.name], name=f"{init.name}.sparse",
                                    sparse_value=sparse_tensor(array, init.name))
            if array.size and node.ByteSize() < init.ByteSize():
                constants.append(node)
                continue
        keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    # Constants first: graph nodes must stay in topological order
    nodes = constants + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return out, [n.output[0] for n in constants]


@dataclass
class Sizes:
    """Bytes of one model in each form, side by side: the dense ONNX file, the sparse-weight one,
    and each compressed with xz -6 (and zstd when the `zstandard` package is installed)."""

    dense: int
    sparse: int
    dense_xz: int
    sparse_xz: int
    dense_zstd: int | None
    sparse_zstd: int | None
    sparse_tensors: int          # tensors stored sparse in the sparse form

    def forms(self) -> dict[str, int]:
        """Every measured form by name (zstd only when measured)."""
        return {k: v for k, v in asdict(self).items() if k != "sparse_tensors" and v is not None}

    @property
    def smallest(self) -> str:
        forms = self.forms()
        return min(forms, key=forms.get)

    def ratio(self, form: str) -> float:
        """A form's size over the dense file's."""
        return self.forms()[form] / self.dense

    def to_dict(self) -> dict:
        return {**asdict(self), "smallest": self.smallest, "smallest_ratio": self.ratio(self.smallest)}


def _zstd_size(data: bytes) -> int | None:
    try:
        import zstandard
    except ImportError:      # optional: edgeprune does not depend on it
        return None
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))


def measure_sizes(dense: bytes, sparse: bytes, sparse_tensors: int) -> Sizes:
    """Sizes of the serialized dense and sparse forms of one model."""
    return Sizes(dense=len(dense), sparse=len(sparse), dense_xz=xz_size(dense), sparse_xz=xz_size(sparse),
                 dense_zstd=_zstd_size(dense), sparse_zstd=_zstd_size(sparse), sparse_tensors=sparse_tensors)


def sparse_export(model: onnx.ModelProto, dense: bytes, x: np.ndarray) -> tuple[bytes, Sizes]:
    """The sparse-weight form of ``model`` (serialized as ``dense``), checked: it passes
    `onnx.checker` with `full_check`, and ONNX Runtime gives bit-identical outputs to the dense
    form on inputs ``x``. Returns its bytes and the sizes of both forms."""
    import onnxruntime as ort

    sparse_model, names = sparsify(model)
    try:
        onnx.checker.check_model(sparse_model, full_check=True)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        raise ParityError(f"sparse-weight model fails the ONNX checker: {str(e).splitlines()[0][:200]}") from None
    data = sparse_model.SerializeToString()
    outputs = []
    for blob in (dense, data):
        sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        outputs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    if not np.array_equal(outputs[0], outputs[1]):
        diff = float(np.abs(outputs[0] - outputs[1]).max())
        raise ParityError(f"sparse-weight model differs from the dense one in ONNX Runtime (max |diff| {diff:.3g})")
    return data, measure_sizes(dense, data, len(names))
