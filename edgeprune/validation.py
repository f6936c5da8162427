"""Will this ONNX model build and run on that target? Checks that need no device (DEPLOY.md §8.2).

`validate_onnx(path, target)` returns `Problem`s, each one line naming the layer and the fix:

- the ONNX checker with `full_check` (which runs strict shape and type inference);
- the model's opset against the target's `stack.max_opset` (and TensorRT 10+'s minimum, 9);
- for TensorRT targets, every node against the operator list of the target's TensorRT release
  (`TRT_ONNX_OPERATORS`, from onnx-tensorrt's `docs/operators.md` and Changelog), Q/DQ zero points
  (TensorRT quantizes symmetrically), and FP16/INT8 on TensorRT 11, which builds the types the
  ONNX has (FP16 tensors, Q/DQ nodes);
- with a DLA core (`build.dla_core >= 0`): static input shapes, FP16/INT8 precision, and the
  layers DLA cannot run (they fall back to the GPU, or are errors without `gpu_fallback`);
- sparse initializers: a note that they are densified before TensorRT, whose parser reads only
  dense initializers (`densify_sparse_initializers` does it).

A problem with severity "note" does not stop a build; "error" does.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from edgeprune.errors import InputError, first_line
from edgeprune.backends.trt_versions import trt_generation
from edgeprune.versions import version_tuple

if TYPE_CHECKING:
    from edgeprune.targets import Target

# ONNX operators the TensorRT ONNX parser imports, keyed by the release that first lists them.
# "8.2" is onnx-tensorrt's docs/operators.md of 8.4-GA less Xor and Shrink, which its Changelog
# adds in 8.4; "8.5" is the 8.5-GA table's additions (the floor of the 8.5-10.x generation);
# later keys are the Changelog's "Added support for" entries up to 10.15, whose table lists every
# operator here. "10.0" holds three operators the 10.15 table lists that no Changelog entry
# dates (exact release unverified). No 11.x table was available: 11.x is taken to read all of
# them. Restrictions the tables state are checked separately where they are cheap to check.
TRT_ONNX_OPERATORS: dict[str, frozenset[str]] = {
    "8.2": frozenset("""
        Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
        Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
        DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
        Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
        Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN
        LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
        MaxPool Mean Min Mul Neg NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu
        QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum
        ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
        Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND
        Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
        Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where
        """.split()),
    "8.4": frozenset({"Xor", "Shrink"}),
    "8.5": frozenset("""
        GridSample HardSwish MeanVarianceNormalization Mod NonZero OneHot RandomNormal
        RandomNormalLike Reciprocal RoiAlign Trilu""".split()),
    "8.6": frozenset({"GroupNormalization", "LayerNormalization", "IsInf"}),
    "9.2": frozenset({"Hardmax"}),
    "10.0": frozenset({"CastLike", "Gelu", "Mish"}),
    "10.1": frozenset({"DeformConv"}),
    "10.4": frozenset({"BlackmanWindow", "HammingWindow", "HannWindow"}),
    "10.5": frozenset({"STFT"}),
    "10.14": frozenset({"Attention"}),
    "10.15": frozenset({"RotaryEmbedding", "RMSNormalization", "TensorScatter"}),
}

# Operators TensorRT runs natively on a DLA core (NVIDIA Deep-Learning-Accelerator-SW
# op_coverage.md, "Orin DLA support through TensorRT" = Native, TensorRT 8.5/8.6; Xavier's DLA v1
# supports most of them too), plus those TensorRT folds away at build time. Anything else runs
# on the GPU (with gpu_fallback) or fails the build.
DLA_OPERATORS = frozenset("""
    Abs Add AveragePool BatchNormalization Clip Concat Constant ConstantOfShape Conv ConvTranspose
    Equal Gemm LeakyRelu LRN MatMul Max MaxPool Mul PRelu Relu Reshape Resize Shape Sigmoid Slice
    Softmax Split Sub Sum Tanh Transpose Upsample""".split())
_DLA_CONSTANT_WEIGHTS = {"Gemm", "MatMul"}  # DLA needs their second input to be a constant

@dataclass(frozen=True)
class Problem:
    """One finding about one layer: what is wrong and what to do about it."""

    layer: str        # the node's name, an input or initializer name, or "model"
    message: str
    fix: str = ""
    severity: str = "error"   # "error" stops a build; "note" is worth knowing

    def __str__(self) -> str:
        text = f"{self.layer}: {self.message}"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text if self.severity == "error" else f"note: {text}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def trt_supported_operators(version: str | tuple[int, ...]) -> frozenset[str]:
    """The ONNX operators TensorRT `version`'s parser imports (default domain)."""
    v = version_tuple(version)
    trt_generation(v)  # rejects versions before 8.2
    return frozenset().union(*(ops for since, ops in TRT_ONNX_OPERATORS.items() if v >= version_tuple(since)))


def validate_onnx(onnx_path: Path, target: Target) -> list[Problem]:
    """Everything checkable without the device about building `onnx_path` for `target`.

    Raises InputError when the file does not exist; an unreadable or invalid model is a Problem.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        return [Problem("model", f"not a readable ONNX model: {first_line(e)}", "re-export it (edgeprune export)")]
    problems = _checker_problems(path, model)
    problems += _opset_problems(model, target)
    if target.backend == "tensorrt":
        problems += _tensorrt_problems(model, target)
        if target.build.dla_core >= 0:
            problems += _dla_problems(model, target)
    return problems


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that stop a build (notes left out)."""
    return [p for p in problems if p.severity == "error"]


def densify_sparse_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose sparse initializers (and `Constant` nodes with `sparse_value`) are
    dense tensors of the same name: TensorRT's parser reads only `graph.initializer`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for graph in _graphs(out.graph):
        for sparse in graph.sparse_initializer:
            graph.initializer.append(_dense(sparse))
        del graph.sparse_initializer[:]
        for node in graph.node:
            if node.op_type != "Constant":
                continue
            for attr in node.attribute:
                if attr.name == "sparse_value":
                    dense = _dense(attr.sparse_tensor)
                    attr.Clear()
                    attr.name, attr.type = "value", onnx.AttributeProto.TENSOR
                    attr.t.CopyFrom(dense)
    return out


# ------------------------------------------------------------------------------------------ checks
def _checker_problems(path: Path, model: onnx.ModelProto) -> list[Problem]:
    try:
        if any(g.sparse_initializer for g in _graphs(model.graph)):
            # ONNX type inference types a sparse initializer as sparse_tensor, which no standard
            # operator takes, so the checker rejects every such model. Both runtimes densify them
            # first (ONNX Runtime at load, edgeprune before TensorRT): check what they will run.
            onnx.checker.check_model(densify_sparse_initializers(onnx.load(str(path))), full_check=True)
        else:
            # The path, not the proto: the checker follows external data and handles > 2 GB
            # models. full_check adds strict shape and type inference.
            onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        layer, message = _checker_layer(str(e))
        return [Problem(layer, f"onnx.checker: {message}", "re-export the model or repair the graph it names")]
    return []


def _checker_layer(text: str) -> tuple[str, str]:
    """The node an ONNX checker / shape-inference message is about, and the message on one line."""
    m = re.search(r"op_type:(\w+), node name: ([^)]*)\)", text)
    op, name = (m.group(1), m.group(2)) if m else ("", "")
    if not m and (m := re.search(r"[Nn]ame: (\S*) OpType: (\S+)", text)):
        name, op = m.group(1), m.group(2)
    layer = name.strip() or (f"{op} node" if op else "model")
    # Inference errors come one per line, each "(op_type:..., node name: ...): [Kind] message".
    first = " ".join(text.strip().split("\n(op_type")[0].split()).split("==> Context")[0]
    first = re.sub(r"\[\w+\] ?|Inference error\(s\): |\(op_type:[^)]*\): ", "", first).strip()
    return layer, first[:300]


def _opset_problems(model: onnx.ModelProto, target: Target) -> list[Problem]:
    opset = _default_opset(model)
    max_opset = target.stack.get("max_opset")
    out = []
    if max_opset is not None and opset > max_opset:
        out.append(Problem("model", f"opset {opset} is above the target's max_opset {max_opset}",
                           f"re-export with --opset {max_opset}"))
    version = target.trt_version
    if version and version >= (10,) and opset < 9:
        out.append(Problem("model", f"opset {opset} is below 9, the lowest TensorRT {_vtext(version)} reads",
                           "re-export with --opset 17"))
    return out


def _tensorrt_problems(model: onnx.ModelProto, target: Target) -> list[Problem]:
    version = target.trt_version
    if version is None:  # load_target requires stack.tensorrt; a hand-built Target may not have it
        return [Problem("model", "the target names no TensorRT version", "set stack.tensorrt in the target file")]
    supported = trt_supported_operators(version)
    consts = _constant_names(model.graph)
    out: list[Problem] = []
    for i, node in _nodes(model.graph):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if op not in supported:
            out.append(Problem(_layer(node, i), f"{op} is not in TensorRT {_vtext(version)}'s ONNX operator list",
                               _operator_fix(op, version)))
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = consts.get(node.input[2])
            if zp is not None and np.any(zp != 0):
                out.append(Problem(_layer(node, i), f"{node.op_type} has a non-zero zero point; TensorRT "
                                   "quantizes symmetrically", "quantize with symmetric activations and weights"))
    if trt_generation(version) == "11":
        out += _strongly_typed_problems(model, target.build.precision, version)
    for graph in _graphs(model.graph):
        for sparse in graph.sparse_initializer:
            out.append(Problem(sparse.values.name, "sparse initializer: densified before TensorRT, whose ONNX "
                               "parser reads only dense initializers", severity="note"))
    for i, node in _nodes(model.graph):
        if node.op_type == "Constant" and any(a.name == "sparse_value" for a in node.attribute):
            out.append(Problem(_layer(node, i), "Constant with sparse_value: densified before TensorRT "
                               "(its parser does not read sparse_value)", severity="note"))
    return out


def _strongly_typed_problems(model: onnx.ModelProto, precision: str, version: tuple[int, ...]) -> list[Problem]:
    """TensorRT 11 builds the types the ONNX has (no FP16/INT8 builder flags, no calibrator), so a
    reduced precision must already be in the model (DEPLOY.md §0.2)."""
    trt = f"TensorRT {_vtext(version)}"
    if precision == "int8" and not any(n.op_type == "QuantizeLinear" for _, n in _nodes(model.graph)):
        return [Problem("model", f"{trt} has no INT8 calibrator: INT8 must come as Q/DQ nodes in the ONNX",
                        "quantize the model to Q/DQ first, or use precision fp16")]
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(t.data_type == fp16 for g in _graphs(model.graph) for t in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for _, n in _nodes(model.graph))
    if precision == "fp16" and not has_fp16:
        return [Problem("model", f"{trt} builds the types in the ONNX, and this model has no FP16 tensors",
                        "convert it to FP16 first (ModelOpt AutoCast), or use precision fp32")]
    return []


def _dla_problems(model: onnx.ModelProto, target: Target) -> list[Problem]:
    b = target.build
    core = f"DLA core {b.dla_core}"
    out: list[Problem] = []
    if b.precision not in ("fp16", "int8"):
        out.append(Problem("model", f"{core} runs FP16 and INT8 only, the target asks for {b.precision}",
                           'set build.precision = "fp16" (or "int8")'))
    init_names = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                name = dim.dim_param or "?"
                out.append(Problem(
                    f"input '{inp.name}'", f"dim {axis} ('{name}') is dynamic; {core} builds static shapes only",
                    f"give it a fixed size, e.g. python -m onnxruntime.tools.make_dynamic_shape_fixed --dim_param {name} "
                    "--dim_value 1 in.onnx out.onnx, or set dla_core = -1"))
    consts = set(_constant_names(model.graph))
    severity = "note" if b.gpu_fallback else "error"
    fix = "" if b.gpu_fallback else "set build.gpu_fallback = true, or replace the layer"
    where = "; it runs on the GPU (gpu_fallback)" if b.gpu_fallback else ""
    for i, node in _nodes(model.graph):
        if node.op_type not in DLA_OPERATORS:
            out.append(Problem(_layer(node, i), f"{node.op_type} cannot run on {core}{where}", fix, severity))
        elif node.op_type in _DLA_CONSTANT_WEIGHTS and len(node.input) > 1 and node.input[1] not in consts:
            out.append(Problem(_layer(node, i), f"{node.op_type} with a non-constant second input cannot run on "
                               f"{core}{where}", fix, severity))
    return out


# ----------------------------------------------------------------------------------------- helpers
def _operator_fix(op: str, version: tuple[int, ...]) -> str:
    later = [since for since, ops in TRT_ONNX_OPERATORS.items() if op in ops and version_tuple(since) > version]
    if later:
        return f"replace it with supported operators, or use a target with TensorRT >= {later[0]}"
    return "replace it with supported operators, or provide a TensorRT plugin for it"


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _nodes(graph: onnx.GraphProto) -> Iterator[tuple[int, onnx.NodeProto]]:
    """(index, node) over the graph and its subgraphs; the index names unnamed nodes."""
    i = 0
    for g in _graphs(graph):
        for node in g.node:
            yield i, node
            i += 1


def _layer(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type} node #{index}"


def _constant_names(graph: onnx.GraphProto) -> dict[str, np.ndarray | None]:
    """Tensors known at build time: initializers (with their values when stored inline) and
    Constant outputs. External data is not loaded: such values are None."""
    out: dict[str, np.ndarray | None] = {}
    for g in _graphs(graph):
        for t in g.initializer:
            out[t.name] = None if t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)
        for s in g.sparse_initializer:
            out[s.values.name] = None
        for node in g.node:
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                out[node.output[0]] = numpy_helper.to_array(value) if value is not None else None
    return out


def _dense(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    # ONNX allows linear indices [NNZ] or coordinates [NNZ, rank].
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
    dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
    dense[flat] = values
    return numpy_helper.from_array(dense.reshape(dims), name=sparse.values.name)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)


def _vtext(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
