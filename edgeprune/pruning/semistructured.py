"""2:4 semi-structured sparsity: keep 2 of every 4 consecutive weights along the reduction axis,
and a checker that says which layers have the pattern and which are wide enough to gain from it.

The axis is the one NVIDIA's sparse tensor cores (Ampere and newer, e.g. Jetson Orin) read: for a
KCRS convolution weight, groups of 4 run along C for every output channel k and kernel position
(r, s) (trtexec's own `sparsify()` walks k x rs and applies the window along C); for a Linear
`[out, in]`, along `in`. Polygraphy's pruner uses the same axes (Conv axis 1, Gemm B axis 1 with
transB, MatMul B axis 0) and skips tensors whose axis is not a multiple of 4 (DEPLOY.md §3.2).

Valid 2:4 weights are only *eligible* for sparse kernels: TensorRT times sparse and dense tactics
and keeps the faster, and in practice sparse kernels win only when the reduction (C x R x S: "3x3
conv effectively increases the C by 9x") and the output channels K are around 256 or more
(TensorRT#3849, #4065; DEPLOY.md §3.3). Tensor cores also want channel counts that are multiples of 8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edgeprune.errors import InputError
from edgeprune.pruning.masks import prunable_layers, weight_of

if TYPE_CHECKING:
    import onnx

GROUP, KEEP = 4, 2
# Rule of thumb from TensorRT engineers (DEPLOY.md §3.3): sparse tactics beat dense ones only when
# the reduction length and the output channels are both at least about this wide.
MIN_WIDTH = 256
ALIGN = 8                              # tensor cores: channel counts in multiples of 8 (FP16)


def dense_reason(module: nn.Module) -> str | None:
    """Why a Conv/Linear layer cannot take the 2:4 pattern (None when it can)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed convolution: no 2:4 kernels"
    reduction = weight_of(module).shape[1]
    if reduction % GROUP:
        return f"reduction dim {reduction} is not a multiple of {GROUP}"
    return None


def _grouped(t: torch.Tensor) -> torch.Tensor:
    """View `[out, C, *k]` as `[out * prod(k), C / 4, 4]`: each row of 4 is one group along C."""
    moved = t.movedim(1, -1)
    return moved.reshape(-1, t.shape[1] // GROUP, GROUP)


def _ungrouped(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    moved_shape = (shape[0], *shape[2:], shape[1])
    return g.reshape(moved_shape).movedim(-1, 1)


def select_2to4(scores: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep-masks with the 2 highest-scoring weights of every group of 4 along the reduction axis.

    Layers that cannot take the pattern (see `dense_reason`) get all-True masks and are returned in
    the second dict with the reason. Ties keep the earlier weight of a group (stable sort).
    """
    layers = prunable_layers(model)
    masks, dense = {}, {}
    for name, s in scores.items():
        reason = dense_reason(layers[name])
        if reason:
            masks[name], dense[name] = torch.ones_like(s, dtype=torch.bool), reason
            continue
        g = _grouped(s.detach().float())
        top = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :KEEP]
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, top, True)
        masks[name] = _ungrouped(keep, s.shape)
    return masks, dense


# ---------------------------------------------------------------- checker
@dataclass
class LayerCheck:
    """One weighted layer against the 2:4 rule.

    `satisfies`: every group of 4 along the reduction axis has at least 2 zeros (what TensorRT
    calls "eligible for sparse math"). `wide`: reduction x kernel and outputs both >= MIN_WIDTH.
    `aligned`: reduction and outputs are multiples of ALIGN. `note` says what keeps the layer from
    gaining, empty when nothing does.
    """

    name: str
    kind: str
    shape: list[int]            # weight as [out, reduction, *kernel]
    groups: int
    violating_groups: int
    satisfies: bool
    wide: bool
    aligned: bool
    note: str

    @property
    def likely_faster(self) -> bool:
        """Pattern present and the layer wide and aligned enough for sparse kernels to win."""
        return self.satisfies and self.wide and self.aligned

    def to_dict(self) -> dict:
        return {**asdict(self), "likely_faster": self.likely_faster}


def check_weight(name: str, kind: str, weight: np.ndarray) -> LayerCheck:
    """Check one weight given as `[out, reduction, *kernel]`."""
    w = np.asarray(weight)
    out, reduction = int(w.shape[0]), int(w.shape[1])
    kernel = int(np.prod(w.shape[2:], dtype=np.int64))
    wide = reduction * kernel >= MIN_WIDTH and out >= MIN_WIDTH
    aligned = reduction % ALIGN == 0 and out % ALIGN == 0
    if reduction % GROUP:
        return LayerCheck(name, kind, list(w.shape), 0, 0, False, wide, aligned,
                          f"reduction dim {reduction} is not a multiple of {GROUP}: stays dense")
    zeros = (np.moveaxis(w, 1, -1).reshape(-1, reduction // GROUP, GROUP) == 0).sum(-1)
    violating = int((zeros < GROUP - KEEP).sum())
    satisfies = violating == 0
    notes = []
    if not satisfies:
        notes.append(f"{violating} of {zeros.size} groups of 4 have fewer than {GROUP - KEEP} zeros")
    if not wide:
        notes.append(f"narrow (reduction {reduction}x{kernel}, outputs {out}; sparse kernels win from about "
                     f"{MIN_WIDTH})")
    if not aligned:
        off = [f"{what} {n}" for what, n in (("reduction", reduction), ("outputs", out)) if n % ALIGN]
        notes.append(f"{', '.join(off)} not a multiple of {ALIGN}")
    return LayerCheck(name, kind, list(w.shape), int(zeros.size), violating, satisfies, wide, aligned, "; ".join(notes))


def check_2to4(source: nn.Module | onnx.ModelProto | str | Path, consent=None) -> list[LayerCheck]:
    """2:4 check of every Conv/Linear layer of a PyTorch model, or every Conv/Gemm/MatMul with a
    constant weight of an ONNX model (a ModelProto, an `.onnx` path, or a model file edgeprune loads
    with ``consent``, a ``model_io.Consent``)."""
    import onnx

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"model file not found: {path}")
        if path.suffix == ".onnx":
            try:
                source = onnx.load(str(path))
            except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
                raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
        else:
            from edgeprune.model_io import load_model

            source = load_model(path, consent).model
    if isinstance(source, onnx.ModelProto):
        from edgeprune.onnx_layers import weighted_layers

        return [check_weight(layer.name, layer.op, layer.weight) for layer in weighted_layers(source)]
    checks = []
    for name, m in prunable_layers(source).items():
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            continue   # weight is [in, out, *k]: no 2:4 kernels for it
        checks.append(check_weight(name, type(m).__name__, weight_of(m).detach().cpu().numpy()))
    return checks
