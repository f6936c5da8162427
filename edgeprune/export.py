"""ONNX export with a parity check against PyTorch on real inputs, and edgeprune metadata.

The dynamo exporter (``torch.export`` based) is used for ``nn.Module`` inputs: the TorchScript-based
exporter is deprecated and slated for removal. TorchScript models can only go through the latter.
Weights are exported as they are (masks already applied), as one self-contained file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import __version__
from .errors import InputError, ParityError, ShapeError, first_line
from .data import preprocessing
from .fileio import atomic_write
from .model_io import LoadedModel, set_mode
from .sparse_onnx import Sizes, sparse_export

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class Parity:
    """How closely ONNX Runtime reproduces PyTorch on ``samples`` real inputs."""

    samples: int
    max_abs_diff: float
    top1_agreement: float   # fraction of samples with the same arg-max
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agreement >= 0.999


@dataclass
class ExportResult:
    path: Path
    opset: int
    size_bytes: int
    parity: Parity | None
    sizes: Sizes | None = None      # with sparse weights: dense, sparse and compressed sizes side by side

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        if self.sizes is not None:
            d["sizes"] = self.sizes.to_dict()
        return d


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and deprecation chatter; a CLI user needs none of it."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def to_onnx_model(model: nn.Module, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET,
                  batch: int | None = None) -> onnx.ModelProto:
    """Export with a dynamic batch dimension, or a fixed one of ``batch`` (DLA builds static shapes only).

    What a user's model can cause is an InputError: a forward pass that fails on inputs of
    ``input_shape`` (ShapeError) and what the exporters refuse (`torch.onnx.OnnxExporterError`:
    an operator with no ONNX translation, a graph torch.export cannot trace), naming the operator
    where the exporter does. Anything else is a bug and propagates.
    """
    set_mode(model, False)
    example = (torch.zeros(batch or 2, *input_shape),)
    try:
        with torch.no_grad():
            model(*example)
    except RuntimeError as e:   # torch's shape and dtype mismatches are RuntimeErrors
        raise ShapeError(f"the model does not run on inputs of shape {tuple(input_shape)}: {first_line(e)}") from None
    try:
        with _quiet(), torch.no_grad():
            if not isinstance(model, torch.jit.ScriptModule):
                program = torch.onnx.export(model, example, None, dynamo=True, opset_version=opset,
                                            external_data=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                            optimize=True,
                                            dynamic_shapes=None if batch else
                                            ({0: torch.export.Dim("batch", min=1, max=65536)},))
                # The dynamo exporter writes opset 18 and converts down; where ONNX has no down
                # converter (below 14 for Relu, Reshape, ...) it keeps 18 without a word. Those
                # opsets (TensorRT 8.2 on a Jetson Nano reads up to 13) come from the TorchScript
                # exporter, which writes any opset.
                if any(i.domain in ("", "ai.onnx") and i.version == opset for i in program.model_proto.opset_import):
                    return program.model_proto
            buf = io.BytesIO()
            torch.onnx.export(model, example, buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            return onnx.load_from_string(buf.getvalue())
    except torch.onnx.OnnxExporterError as e:
        raise InputError(exporter_message(e, opset)) from None


# Where the exporters name the operator they could not translate: the dynamo exporter's DispatchError
# ("No ONNX function found for <OpOverload(op='prims.zeta', ...)>") and the TorchScript exporter's
# UnsupportedOperatorError ("Exporting the operator 'aten::special_zeta' to ONNX opset ...").
_OP_PATTERNS = (re.compile(r"OpOverload\(op='([^']+)'"), re.compile(r"the operator '([^']+)'"))


def exporter_message(e: BaseException, opset: int) -> str:
    """One line for an exporter's refusal: the operator it could not translate where it names one,
    else the first line of the innermost cause (the outer ones are the exporter's boilerplate)."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    for err in reversed(chain):
        for pattern in _OP_PATTERNS:
            m = pattern.search(str(err))
            if m:
                return (f"ONNX export failed: operator '{m.group(1)}' has no ONNX translation at opset {opset} "
                        f"(replace it in the model, or try another --opset)")
    return f"ONNX export failed: {first_line(chain[-1])}"


def parity_check(model: nn.Module, onnx_bytes: bytes, x: np.ndarray, rtol: float = 1e-4) -> Parity:
    """Compare ONNX Runtime (CPU, all optimisations) with PyTorch on real inputs ``x``."""
    import onnxruntime as ort

    from .measure.accuracy import predict as run_batches
    from .training import predict

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    fixed = sess.get_inputs()[0].shape[0]
    got = run_batches(_OrtRun(sess), x, fixed if isinstance(fixed, int) and fixed > 0 else 256)
    ref = predict(model, x)
    scale = max(1.0, float(np.abs(ref).max()))
    return Parity(samples=len(x), max_abs_diff=float(np.abs(got - ref).max()),
                  top1_agreement=float((got.argmax(1) == ref.argmax(1)).mean()), tolerance=rtol * scale * 10)


class _OrtRun:
    """The session interface `measure.accuracy.predict` feeds (its input shape says a fixed batch)."""

    def __init__(self, sess):
        self.sess, self.name = sess, sess.get_inputs()[0].name
        self.input_shape = sess.get_inputs()[0].shape

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.name: x})[0]


def export(loaded: LoadedModel, out: Path, *, opset: int = DEFAULT_OPSET, check_inputs: np.ndarray | None = None,
           force: bool = False, extra_metadata: dict[str, str] | None = None,
           sparse_weights: bool = False, data: str | None = None, preprocess: dict | None = None,
           batch: int | None = None) -> ExportResult:
    """Write ``loaded``'s model as ONNX to ``out`` (atomically), after a parity check on ``check_inputs``.

    The metadata records the data set the model expects and its preprocessing (`edgeprune.data`,
    `edgeprune.preprocess`, with `edgeprune.input_shape`): the checkpoint's data set, else ``data``
    (a model file that records none, exported with --data) with ``preprocess`` (an image folder's
    ``Preprocess.to_dict()``; its line ends in the JSON a runtime rebuilds it from); neither, and the
    keys are left out.

    ``sparse_weights``: store zero-rich weights sparse where that is smaller (`edgeprune.sparse_onnx`);
    the result's ``sizes`` then compares the dense, sparse and compressed forms. ``batch`` fixes the
    batch dimension (None: dynamic).
    """
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"output {out} exists (use --force to overwrite)")
    if not 7 <= opset <= 23:
        raise InputError(f"opset {opset} is outside the supported range 7-23")
    ckpt = loaded.checkpoint
    proto = to_onnx_model(loaded.model, ckpt.input_shape, opset, batch)
    meta = {
        "edgeprune.version": __version__,
        "edgeprune.method": str(ckpt.meta.get("method", "dense")),
        "edgeprune.sparsity": f"{float(ckpt.meta.get('sparsity', 0.0)):.6f}",
        "edgeprune.granularity": str(ckpt.meta.get("granularity", "none")),
        "edgeprune.arch": ckpt.arch.ref if ckpt.arch else ckpt.kind,
        "edgeprune.input_shape": ",".join(map(str, ckpt.input_shape)),
        "edgeprune.source_sha256": str(ckpt.meta.get("sha256") or ckpt.meta.get("source_sha256") or ""),
    }
    if ckpt.meta.get("data"):
        data, preprocess = ckpt.meta["data"], ckpt.meta.get("preprocess")
    if data:
        meta.update({"edgeprune.data": str(data), "edgeprune.preprocess": preprocessing(str(data), preprocess)})
    meta.update(extra_metadata or {})
    onnx.helper.set_model_props(proto, meta)
    proto.producer_name, proto.producer_version = "edgeprune", __version__
    data = proto.SerializeToString()
    parity = None
    if check_inputs is not None and len(check_inputs):
        parity = parity_check(loaded.model, data, check_inputs)
        if not parity.ok:
            raise ParityError(f"ONNX output differs from PyTorch: max |diff| {parity.max_abs_diff:.3g} "
                              f"(tolerance {parity.tolerance:.3g}), top-1 agreement {parity.top1_agreement:.2%}")
    sizes = None
    if sparse_weights:
        # identical outputs are checked on the parity inputs, or on seeded noise when there are none
        x = check_inputs if check_inputs is not None and len(check_inputs) else \
            np.random.default_rng(0).standard_normal((8, *ckpt.input_shape)).astype(np.float32)
        data, sizes = sparse_export(proto, data, x[:256])
    atomic_write(out, data, force=force)
    return ExportResult(path=out, opset=proto.opset_import[0].version, size_bytes=len(data), parity=parity,
                        sizes=sizes)
