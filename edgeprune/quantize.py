"""Static INT8 quantisation of an ONNX model with `onnxruntime.quantization`, as a Q/DQ graph.

One Q/DQ ONNX file serves ONNX Runtime (whose CPU provider fuses Q/DQ pairs into QLinearConv,
QGemm, QLinearAdd, ...) and TensorRT's explicit quantisation. Steps:

1. `quant_pre_process`: shape inference and ONNX Runtime's basic graph optimisations, which fold
   BatchNormalization into the preceding Conv so it is quantised as one layer, not two.
2. `quantize_static` in QDQ format with per-channel weights and the calibration method the target
   names (MinMax, Entropy, Percentile, Distribution), calibrated on real images.

The defaults are the settings measured best on this project's CNN (README, "ONNX Runtime (ARM
CPUs) and INT8"); every one can be changed through `quantize_qdq(..., **tuning)`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeprune.errors import InputError, ShapeError, first_line
from edgeprune.onnx_stats import FLOAT_TYPES

METHODS = ("minmax", "entropy", "percentile", "distribution")
# Ops whose outputs are quantised when their inputs are; the rest of the graph stays fp32.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CALIBRATION_BATCH = 64

# The tuned defaults (benchmarks/bench_int8.py). Asymmetric uint8 activations with symmetric int8
# per-channel weights: on x86 ONNX Runtime fuses these Q/DQ groups into QLinearConv/QLinearAdd/QGemm,
# while with int8 activations (the library default, PLAIN) most convolutions stay DQ -> fp32 Conv -> Q
# and run slower than fp32. TensorRT needs symmetric int8 activations (override both).
TUNED: dict[str, Any] = {
    "preprocess": True,
    "activation_type": "uint8",
    "weight_type": "int8",
    "activation_symmetric": False,
    "weight_symmetric": True,
    "reduce_range": False,
    "exclude_first": False,
    "exclude_last": False,
    "keep_removable_activations": False,
    "quantize_bias": True,
}
# Per-channel QDQ with onnxruntime.quantization's own defaults and no pre-processing: the baseline.
PLAIN: dict[str, Any] = {**TUNED, "preprocess": False, "activation_type": "int8"}
# TensorRT reads only symmetric INT8 Q/DQ (zero point 0, DEPLOY.md §1.4): int8 activations, symmetric.
TENSORRT: dict[str, Any] = {**TUNED, "activation_type": "int8", "activation_symmetric": True}


@dataclass
class QuantizeResult:
    """What `quantize_qdq` wrote and how: `quantized` are the graph nodes that run on int8 inputs,
    `excluded` the compute nodes (Conv/Gemm/MatMul) left in fp32, by name."""

    path: Path
    method: str
    per_channel: bool
    quantized: list[str]
    excluded: list[str]
    seconds: float
    calibration_samples: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def quantize_qdq(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    **tuning: Any,
) -> QuantizeResult:
    """Quantise the fp32 ONNX model `src` to a static INT8 Q/DQ model at `dst`.

    `calibration` holds real input rows (N x C x H x W float32, as the model takes them); `method`
    is the calibration method (minmax | entropy | percentile | distribution). `tuning` overrides
    `TUNED`: preprocess, activation_type / weight_type ("int8" | "uint8"), activation_symmetric,
    weight_symmetric, reduce_range, exclude_first / exclude_last (keep the first / last compute
    layer in fp32), keep_removable_activations, quantize_bias, nodes_to_exclude (names).
    `dst` is written atomically; `src` is never modified.
    """
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"ONNX file not found: {src}")
    if method not in METHODS:
        raise InputError(f"unknown calibration method '{method}' (available: {', '.join(METHODS)})")
    unknown = set(tuning) - set(TUNED) - {"nodes_to_exclude"}
    if unknown:
        raise InputError(f"unknown quantisation option(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted([*TUNED, 'nodes_to_exclude']))})")
    settings = {**TUNED, **tuning}
    model = onnx.load(str(src))
    input_name, batch = _input(model)
    calibration = check_calibration(calibration, model)

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeprune-quant-") as tmp:
        model_in = src
        if settings["preprocess"]:
            model_in = Path(tmp) / "pre.onnx"
            try:
                with _quiet():
                    quant_pre_process(str(src), str(model_in))
            except Exception as e:  # noqa: BLE001 - shape inference raises many types
                raise InputError(f"cannot pre-process {src.name} for quantisation: {first_line(e)}") from None
        pre = onnx.load(str(model_in)) if settings["preprocess"] else model
        excluded = list(settings.get("nodes_to_exclude") or [])
        compute = [n.name for n in pre.graph.node if n.op_type in COMPUTE_OPS]
        if settings["exclude_first"] and compute:
            excluded.append(compute[0])
        if settings["exclude_last"] and compute:
            excluded.append(compute[-1])
        # Written next to dst, then renamed into place: a reader never sees half a model.
        out = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp.onnx")
        try:
            with _quiet():
                quantize_static(
                    str(model_in), str(out), _Reader(input_name, calibration, batch or CALIBRATION_BATCH),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=bool(settings["reduce_range"]),
                    activation_type=_qtype(settings["activation_type"]),
                    weight_type=_qtype(settings["weight_type"]),
                    nodes_to_exclude=excluded or None,
                    calibrate_method=calibration_method(method),
                    extra_options={
                        "ActivationSymmetric": bool(settings["activation_symmetric"]),
                        "WeightSymmetric": bool(settings["weight_symmetric"]),
                        "QDQKeepRemovableActivations": bool(settings["keep_removable_activations"]),
                        "QuantizeBias": bool(settings["quantize_bias"]),
                    },
                )
            result = onnx.load(str(out))
            if not any(n.op_type == "QuantizeLinear" for n in result.graph.node):
                # quantize_static writes an unchanged fp32 model when it finds nothing to quantise;
                # an "INT8" build of it would measure fp32 under an INT8 label.
                ops = sorted({n.op_type for n in pre.graph.node})
                left = f", and {len(excluded)} node(s) were excluded" if excluded else ""
                raise InputError(f"quantising {src.name} quantised nothing: onnxruntime found no operator to quantise "
                                 f"among {', '.join(ops) or 'no nodes'}{left}")
            quantized, fp32 = _node_precision(result)
            os.replace(out, dst)
        finally:
            out.unlink(missing_ok=True)
    return QuantizeResult(
        path=dst, method=method, per_channel=per_channel, quantized=quantized, excluded=fp32,
        seconds=time.perf_counter() - t0, calibration_samples=int(len(calibration)), settings=settings,
    )


def calibration_method(name: str):
    """The `onnxruntime.quantization.CalibrationMethod` for a target's `calibration_method`."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "distribution": CalibrationMethod.Distribution,
    }[name]


def calibration_path(spec: str | Path) -> Path:
    """Where a target's `build.calibration` points: an absolute path, a path relative to the
    working directory, or else a file edgeprune ships (`calibration/fmnist.npz`)."""
    from edgeprune.shipped import shipped_path

    path = Path(spec)
    if path.is_absolute() or path.exists():
        return path
    return shipped_path(*path.parts)


def load_calibration(path: Path) -> np.ndarray:
    """The images of a calibration .npz (`x`, uint8 0-255 or float), as float32 N x C x H x W in
    [0, 1], the scaling `edgeprune.data` gives every data set."""
    from edgeprune.data import load_npz

    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration file not found: {path}")
    return load_npz(path).x


def calibration_problems(source: str, input_shape: tuple[int, ...] | None = None) -> list[str]:
    """Why the calibration set ``source`` (a path or a shipped name) cannot calibrate a model whose
    samples have ``input_shape`` (None: not checked), one line each; empty when it can. Reads the
    file, so a wrong set is found before any export, not after both."""
    if not source:
        return ["precision 'int8' needs a calibration set: set build.calibration in the target or pass --calibration"]
    path = calibration_path(source)
    if not path.is_file():
        return [f"calibration file not found: {path}"]
    if input_shape is None:
        return []
    x = load_calibration(path)
    if tuple(x.shape[1:]) != tuple(input_shape):
        return [f"calibration images in {path} have shape {tuple(x.shape[1:])}; the model takes {tuple(input_shape)}"]
    return []


def check_calibration(x: np.ndarray, model) -> np.ndarray:
    """`x` as float32 rows fitting the model's input, or a one-line ShapeError."""
    x = np.asarray(x)
    name, _ = _input(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    want = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    fits = x.ndim == len(want) + 1 and all(w is None or w == g for w, g in zip(want, x.shape[1:]))
    if not fits or len(x) == 0:
        shown = ", ".join("?" if w is None else str(w) for w in want)
        raise ShapeError(f"calibration data has shape {tuple(x.shape)} but the model input '{name}' takes "
                         f"N x ({shown}) rows")
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"calibration data must be float images (got {x.dtype}); load .npz files with load_calibration")
    return np.ascontiguousarray(x, dtype=np.float32)


class _Reader:
    """`CalibrationDataReader` over an array, in batches the model accepts."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int):
        self._batches: Iterator[np.ndarray] = self._split(x, batch)
        self._name = input_name

    @staticmethod
    def _split(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
        from edgeprune.measure.timing import tile_rows

        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            # A static batch needs full batches: pad the last one with real rows.
            yield tile_rows(chunk, batch) if len(chunk) < batch else chunk

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._batches, None)
        return None if chunk is None else {self._name: chunk}


def _input(model) -> tuple[str, int | None]:
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise InputError(f"quantisation needs a model with one input, this one has {len(inputs)}")
    d0 = inputs[0].type.tensor_type.shape.dim[0] if inputs[0].type.tensor_type.shape.dim else None
    batch = d0.dim_value if d0 is not None and d0.HasField("dim_value") and d0.dim_value > 0 else None
    return inputs[0].name, batch


def _node_precision(model) -> tuple[list[str], list[str]]:
    """(nodes whose float inputs all arrive through a DequantizeLinear, compute nodes that do not),
    by name. Integer constants (shapes, axes) do not count as inputs."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consts = {i.name for i in model.graph.initializer if i.data_type not in FLOAT_TYPES}
    quantized, fp32 = [], []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        inputs = [i for i in n.input if i and i not in consts]
        if inputs and all(i in dq_out for i in inputs):
            quantized.append(n.name)
        elif n.op_type in COMPUTE_OPS:
            fp32.append(n.name)
    return quantized, fp32


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep onnxruntime.quantization's prints and root-logger warnings out of our stdout (which
    may be `--json`) and stderr (progress bars)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if name not in types:
        raise InputError(f"quantisation type must be int8 or uint8, got '{name}'")
    return types[name]
