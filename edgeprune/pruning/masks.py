"""Keep-masks over prunable weights, and sparsity accounting.

Prunable means the `weight` of a Conv or Linear module and the packed query/key/value projection
(`in_proj_weight`) of an nn.MultiheadAttention (its output projection is an nn.Linear already);
biases and norm layers are never pruned, so every sparsity figure here is the fraction of those
weights that is zero / removed. `weight_of` gives a prunable layer's weight whatever its type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.errors import InputError

# Layers whose output channels Torch-Pruning removes (channel granularity roots).
PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
SCOPES = ("global", "layer")


def prunable_layers(model: nn.Module, exclude_output: bool = False) -> dict[str, nn.Module]:
    """Conv/Linear modules by qualified name, in `named_modules` order.

    `exclude_output` drops the last prunable module in that order: the classifier, whose output
    units are the classes and so cannot be removed. (Registration order is assumed to follow the
    forward pass, as it does for every zoo model; `structured` checks the real execution order.)
    """
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, PRUNABLE_TYPES) or _packed_attention(m)}
    if exclude_output and layers:
        layers.pop(next(reversed(layers)))
    return layers


def require_prunable(model: nn.Module, what: str = "the model") -> None:
    """InputError when `model` has no layer `prunable_layers` finds: pruning it would change nothing.

    TorchScript and torch.export programs keep their layers as compiled code (no nn.Conv2d or
    nn.Linear instances), so they land here rather than being reported as pruned."""
    if not prunable_layers(model):
        raise InputError(f"{what} has no Conv/Linear/attention module edgeprune can prune (TorchScript and torch.export "
                         "programs hold their layers as compiled code): nothing would be pruned; give the model as "
                         "an nn.Module (--arch package.module:factory) instead")


def _packed_attention(m: nn.Module) -> bool:
    # With kdim/vdim different from embed_dim, q/k/v have separate weights and in_proj_weight is None.
    return isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None


def weight_of(layer: nn.Module) -> torch.Tensor:
    """The prunable weight of a layer `prunable_layers` returns: Conv/Linear `weight`, or an attention's
    packed q/k/v projection `in_proj_weight` ([3 * embed_dim, embed_dim], laid out like a Linear's)."""
    return layer.in_proj_weight if isinstance(layer, nn.MultiheadAttention) else layer.weight


def select(scores: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that remove the lowest-scoring `sparsity` fraction of weights.

    global: one ranking over all layers; exactly round(sparsity * D) weights go (D = all scored
    weights). layer: each layer loses round(sparsity * n_layer) of its own weights.
    Ties go in a fixed order (layer order, then flat index), so equal scores give equal masks.
    Every layer keeps at least its single highest-scoring weight, so no layer is cut off
    entirely; where that makes the target unreachable (sparsity very close to 1 on tiny layers),
    slightly fewer weights are removed.
    """
    if scope not in SCOPES:
        raise InputError(f"unknown scope {scope!r} (choose from: {', '.join(SCOPES)})")
    if not (0.0 <= float(sparsity) < 1.0):
        raise InputError(f"sparsity must be in [0, 1) (the fraction removed), got {sparsity}")
    if not scores:
        return {}
    if scope == "layer":
        return {name: _select_flat(s.reshape(-1).float(), sparsity).reshape(s.shape) for name, s in scores.items()}

    flats = [s.reshape(-1).float() for s in scores.values()]
    sizes = [f.numel() for f in flats]
    ranked = torch.cat(flats)
    protected = torch.zeros_like(ranked, dtype=torch.bool)
    offset = 0
    for f in flats:
        if f.numel():
            protected[offset + int(torch.argmax(f))] = True
        offset += f.numel()
    keep = _drop_lowest(ranked, protected, round(sparsity * ranked.numel()))
    return {name: part.reshape(s.shape) for (name, s), part in zip(scores.items(), keep.split(sizes))}


def _select_flat(flat: torch.Tensor, sparsity: float) -> torch.Tensor:
    protected = torch.zeros_like(flat, dtype=torch.bool)
    if flat.numel():
        protected[int(torch.argmax(flat))] = True
    return _drop_lowest(flat, protected, round(sparsity * flat.numel()))


def _drop_lowest(flat: torch.Tensor, protected: torch.Tensor, n_remove: int) -> torch.Tensor:
    # Protected entries sort last; a stable sort makes the tie order the index order.
    n_remove = min(n_remove, int((~protected).sum()))
    key = flat.masked_fill(protected, float("inf"))
    order = torch.sort(key, stable=True).indices
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:n_remove]] = False
    return keep


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out weight in place (call after each optimizer step to keep zeros zero)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or not (isinstance(module, PRUNABLE_TYPES) or _packed_attention(module)):
            raise InputError(f"mask for {name!r} matches no Conv/Linear/attention layer of the model")
        weight = weight_of(module)
        if tuple(mask.shape) != tuple(weight.shape):
            raise InputError(f"mask for {name!r} has shape {list(mask.shape)}, weight has {list(weight.shape)}")
        # masked_fill writes +0.0; multiplying by the mask would leave -0.0 for negative weights, and
        # mixed-sign zeros compress about 20 % worse in the exported file.
        weight.masked_fill_(~mask.to(device=weight.device, dtype=torch.bool), 0.0)


def masks_from_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep-masks read off the weights: nonzero = kept (how a pruned checkpoint's masks are recovered)."""
    return {name: weight_of(m).detach() != 0 for name, m in prunable_layers(model).items()}


@dataclass
class LayerSparsity:
    """Zero count of one prunable layer's weight."""

    name: str
    kind: str
    shape: list[int]
    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.total if self.total else 0.0


@dataclass
class SparsityReport:
    """Per-layer and overall sparsity of prunable weights, all-parameter counts and dense MACs.

    `macs` are per sample as executed (Torch-Pruning's counter: Conv/Linear multiply-adds plus
    bias, norm and activation-module ops): zeros are still multiplied, so only removed channels
    lower it.
    """

    layers: list[LayerSparsity] = field(default_factory=list)
    total: int = 0
    nonzero: int = 0
    params_total: int = 0
    params_nonzero: int = 0
    macs: int = 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        """JSON-able form, with the derived sparsities written out."""
        data = asdict(self)
        data["sparsity"] = self.sparsity
        for row, layer in zip(data["layers"], self.layers):
            row["sparsity"] = layer.sparsity
        return data


@torch.no_grad()
def sparsity_report(model: nn.Module, example_input: torch.Tensor) -> SparsityReport:
    """Count zeros per prunable layer and overall, plus parameters and MACs for one sample."""
    layers = [
        LayerSparsity(
            name=name,
            kind=type(m).__name__,
            shape=list(weight_of(m).shape),
            total=weight_of(m).numel(),
            nonzero=int(torch.count_nonzero(weight_of(m))),
        )
        for name, m in prunable_layers(model).items()
    ]
    params = list(model.parameters())
    # Torch-Pruning's counter averages some ops over the batch and not others, so count one sample.
    macs, _ = tp.utils.count_ops_and_params(model, example_input[:1])
    return SparsityReport(
        layers=layers,
        total=sum(layer.total for layer in layers),
        nonzero=sum(layer.nonzero for layer in layers),
        params_total=sum(p.numel() for p in params),
        params_nonzero=sum(int(torch.count_nonzero(p)) for p in params),
        macs=int(macs),
    )
