"""Physical removal of output channels (Conv) and neurons (Linear) with Torch-Pruning.

Torch-Pruning's DependencyGraph finds what must shrink together (the BatchNorm after a conv, the
next layer's inputs, every branch of a residual add) and does the surgery; this module decides
*which* and *how many* channels go, from any Method's per-weight scores, and records the removals
as a JSON-able plan so a compacted model can be rebuilt from its base architecture.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from edgeprune.errors import InputError, first_line
from edgeprune.pruning.masks import PRUNABLE_TYPES, prunable_layers, weight_of

# No layer loses more than this share of its channels in one call, so global ranking cannot
# collapse a layer whose scores happen to be uniformly low.
MAX_LAYER_RATIO = 0.9
# Budgets move in steps (one channel, or round_to channels), so an exact hit is not always
# possible; a final miss by more than this is worth telling the user about.
TOLERANCE = 0.02

_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels,
            function.prune_depthwise_conv_out_channels)
_IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels,
           function.prune_depthwise_conv_in_channels)


def kept_whole(model: nn.Module) -> dict[str, str]:
    """Layers whose channels channel pruning leaves alone, with the reason; every channel group that
    passes through one of them stays whole.

    An attention's embedding is split into heads: cutting it narrows every head, and a model that
    fixes its embedding width in a reshape (as many ViTs do) no longer runs, so the residual stream of
    a transformer keeps its width and only the MLP hidden neurons are removed. A grouped convolution
    (1 < groups < channels) needs the same count removed from every group, which a ranking over
    channels does not give (Torch-Pruning's per-channel surgery then breaks it)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            out[name] = "attention: its heads and the embedding they read are kept whole"
        elif isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.in_channels:
            out[name] = f"grouped convolution (groups={m.groups})"
    return out


def _channel_energy(layer: nn.Module, scores: torch.Tensor, dim: str) -> torch.Tensor:
    """Sum of squared scores per output ("out") or input ("in") channel of a Conv/Linear weight."""
    sq = scores.detach().double().pow(2)
    groups = getattr(layer, "groups", 1)
    transposed = getattr(layer, "transposed", False)
    # Weight layout: conv [out, in/g, *k], transposed conv [in, out/g, *k], linear [out, in].
    # Grouped layouts are split per group so each channel only sums the slice it really owns.
    lead, second = sq.shape[0], sq.shape[1]
    want_lead = (dim == "out") != transposed
    if want_lead:
        return sq.reshape(lead, -1).sum(1)
    per_group = sq.reshape(groups, lead // groups, second, -1).sum(dim=(1, 3))
    return per_group.reshape(-1)


class ScoreImportance(tp.importance.Importance):
    """Channel importance from per-weight scores, aggregated over a Torch-Pruning group.

    A channel's importance is the sum of squared scores over every weight slice that disappears
    with it: the root layer's output slice and the coupled output/input slices of the other layers
    in its group (the next layer's inputs, each branch of a residual add). With magnitude scores
    this is the group L2 norm squared. Norm layers carry no scores and add nothing.

    `normalize=True` divides each group's importances by their mean. Global ranking then compares
    how a channel stands within its own group rather than raw magnitudes, which differ across layers
    by arbitrary scale (a conv followed by BatchNorm can be rescaled freely).
    """

    def __init__(self, scores: dict[str, torch.Tensor], model: nn.Module, normalize: bool = False,
                 filter_scores: dict[str, torch.Tensor] | None = None) -> None:
        self.scores = scores
        self.names = {m: n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
        self.normalize = normalize
        # A method's own per-filter scores (Method.filter_scores) replace the aggregate in the groups they reach.
        self.filter_scores = filter_scores or {}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        # Root channel number -> position in the returned vector (groups may hold a subset).
        position = {r: i for i, r in enumerate(group[0].root_idxs)}
        imp = self._filter_importance(group, position)
        if imp is not None:
            return imp / imp.mean() if self.normalize and imp.mean() > 0 else imp
        imp = torch.zeros(len(position), dtype=torch.float64)
        found = False
        for item in group:
            layer, fn = item.dep.target.module, item.dep.handler
            name = self.names.get(layer) if isinstance(layer, nn.Module) else None
            if name is None or name not in self.scores:
                continue
            if any(r is None for r in item.root_idxs):
                continue
            if fn in _OUT_FNS:
                energy = _channel_energy(layer, self.scores[name], "out")
            elif fn in _IN_FNS:
                energy = _channel_energy(layer, self.scores[name], "in")
            else:
                continue
            # idxs are in this layer's own channel numbering; root_idxs say which root channel
            # each one belongs to (many-to-one after a Flatten), so scatter_add sums them there.
            where = torch.tensor([position[r] for r in item.root_idxs], dtype=torch.long)
            imp.scatter_add_(0, where, energy[torch.tensor(item.idxs, dtype=torch.long)])
            found = True
        if not found:
            return None
        if self.normalize and imp.mean() > 0:
            imp = imp / imp.mean()
        return imp

    def _filter_importance(self, group, position: dict[int, int]) -> torch.Tensor | None:
        # Sum of the method's own filter scores over every layer whose output channels this group
        # removes (one conv, or each conv feeding a residual add); None where it scored none of them.
        imp = torch.zeros(len(position), dtype=torch.float64)
        found = False
        for item in group:
            layer = item.dep.target.module
            name = self.names.get(layer) if isinstance(layer, nn.Module) else None
            if name not in self.filter_scores or item.dep.handler not in _OUT_FNS:
                continue
            if any(r is None for r in item.root_idxs):
                continue
            where = torch.tensor([position[r] for r in item.root_idxs], dtype=torch.long)
            scores = self.filter_scores[name].detach().double()
            imp.scatter_add_(0, where, scores[torch.tensor(item.idxs, dtype=torch.long)])
            found = True
        return imp if found else None


@dataclass
class _Group:
    name: str  # qualified name of the root layer (whose output channels are removed)
    size: int
    imp: torch.Tensor
    floor: int  # fewest channels it may keep


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Tracing runs a forward pass; in train mode it would move BatchNorm running statistics.
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in zip(model.modules(), was_training):
            m.train(mode)


def _output_layer(model: nn.Module, example_input: torch.Tensor) -> nn.Module | None:
    """The last Conv/Linear to run: its output units are the classes, so it is never a root."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    try:
        with torch.no_grad(), _eval_mode(model):
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def _build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    with _eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def _out_fn(module: nn.Module):
    return function.prune_linear_out_channels if isinstance(module, nn.Linear) else function.prune_conv_out_channels


def _prunable_weight_count(model: nn.Module) -> int:
    return sum(weight_of(m).numel() for m in prunable_layers(model).values())


def _macs(model: nn.Module, example_input: torch.Tensor) -> float:
    # Torch-Pruning's counter averages some ops over the batch and not others, so count one sample.
    macs, _ = tp.utils.count_ops_and_params(model, example_input[:1])
    return float(macs)


def budget_count(model: nn.Module, example_input: torch.Tensor, budget: str) -> float:
    """What a channel-pruning budget counts: prunable weights ("params") or MACs per sample ("macs")."""
    if budget == "params":
        return float(_prunable_weight_count(model))
    if budget == "macs":
        return _macs(model, example_input)
    raise InputError(f"unknown budget {budget!r} (choose from: params, macs)")


def _round_width(keep: int, size: int, floor: int, round_to: int) -> int:
    if round_to <= 1 or keep >= size:
        return keep
    width = round_to * math.floor(keep / round_to + 0.5)
    width = max(width, round_to * math.ceil(floor / round_to))
    # A layer narrower than one rounding unit, or one whose rounding lands at full width,
    # stays as it is rather than growing or emptying.
    return min(width, size)


class _Planner:
    """Turns a channel ratio into per-group keep counts; monotone in the ratio, so bisection works."""

    def __init__(self, groups: list[_Group], scope: str, round_to: int) -> None:
        self.groups = groups
        self.scope = scope
        self.round_to = round_to
        self.removable = [g.size - g.floor for g in groups]
        if scope == "global" and groups:
            owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
            order = torch.sort(torch.cat([g.imp for g in groups]), stable=True).indices
            self.global_owner = owner[order].tolist()

    def keep(self, ratio: float) -> tuple[int, ...]:
        if self.scope == "layer":
            raw = [max(g.floor, math.floor(g.size * (1 - ratio) + 0.5)) for g in self.groups]
        else:
            target = math.floor(ratio * sum(self.removable) + 0.5)
            removed = [0] * len(self.groups)
            count = 0
            for gi in self.global_owner:
                if count >= target:
                    break
                if removed[gi] < self.removable[gi]:
                    removed[gi] += 1
                    count += 1
            raw = [g.size - r for g, r in zip(self.groups, removed)]
        return tuple(_round_width(k, g.size, g.floor, self.round_to) for k, g in zip(raw, self.groups))

    def steps(self, keep: tuple[int, ...]) -> list[dict]:
        plan = []
        for g, k in zip(self.groups, keep):
            if k < g.size:
                # lowest importance first; ties by index (stable sort) so plans are reproducible
                drop = torch.sort(g.imp, stable=True).indices[: g.size - k]
                plan.append({"layer": g.name, "dim": "out", "idxs": sorted(int(i) for i in drop)})
        return plan


def _apply(model: nn.Module, graph: tp.DependencyGraph, plan: list[dict]) -> None:
    modules = dict(model.named_modules())
    for step in plan:
        module = modules[step["layer"]]
        graph.get_pruning_group(module, _out_fn(module), step["idxs"]).prune()


def _discover(model: nn.Module, example_input: torch.Tensor, importance: ScoreImportance,
              scores: dict[str, torch.Tensor]) -> tuple[tp.DependencyGraph, list[_Group], list[str]]:
    """The model's dependency graph, the channel groups that may be narrowed (root = a Conv/Linear
    whose output channels go; never the classifier), and the layers that kept a group whole."""
    graph = _build_graph(model, example_input)
    output = _output_layer(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    whole = kept_whole(model)
    groups = []
    blocked: list[str] = []
    for group in graph.get_all_groups(ignored_layers=[output] if output is not None else [],
                                      root_module_types=PRUNABLE_TYPES):
        root = group[0].dep.target.module
        size = len(group[0].idxs)
        blocker = next((names[it.dep.target.module] for it in group if names.get(it.dep.target.module) in whole), None)
        if blocker is not None:
            blocked.append(blocker)
            continue
        imp = importance(group)
        if imp is None or size < 2 or names.get(root) not in scores:
            continue
        floor = max(1, math.ceil(size * (1 - MAX_LAYER_RATIO)))
        groups.append(_Group(names[root], size, imp, floor))
    return graph, groups, blocked


def _magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: weight_of(m).detach().abs() for name, m in prunable_layers(model).items()}


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """The channel groups channel pruning may narrow, as {root layer: channels}. A group is every
    layer that must shrink together (a conv, its BatchNorm, the next layer's inputs, each branch of
    a residual add); it is named by the layer whose output channels it removes."""
    scores = _magnitude_scores(model)
    _, groups, _ = _discover(model, example_input, ScoreImportance(scores, model), scores)
    return {g.name: g.size for g in groups}


def set_widths(model: nn.Module, example_input: torch.Tensor, widths: dict[str, int]) -> list[dict]:
    """Narrow the named groups (`channel_groups`' names) to the given widths in place, removing
    each group's channels of smallest L2 norm (over every weight slice that goes with the channel,
    as `ScoreImportance` with magnitude scores); the plan, as `prune_channels` returns it."""
    scores = _magnitude_scores(model)
    graph, groups, _ = _discover(model, example_input, ScoreImportance(scores, model), scores)
    known = {g.name for g in groups}
    if set(widths) - known:
        raise InputError(f"no channel group named {sorted(set(widths) - known)[0]!r} (groups: {', '.join(sorted(known))})")
    keep = tuple(min(g.size, max(1, int(widths.get(g.name, g.size)))) for g in groups)
    plan = _Planner(groups, "layer", 1).steps(keep)
    _apply(model, graph, plan)
    return plan


def prune_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    scores: dict[str, torch.Tensor],
    sparsity: float,
    scope: str,
    budget: str,
    round_to: int,
    filter_scores: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Physically remove output channels / neurons until `budget` has shrunk by `sparsity`.

    budget "params": fraction of prunable (Conv/Linear) weights removed; "macs": fraction of MACs
    per sample removed; both relative to `model` as passed. Channel importance is
    `ScoreImportance` over `scores` (or `filter_scores` where given). scope "layer" removes the same share of channels from every
    group of coupled layers; "global" ranks all channels together (importance normalised per
    group) with at most MAX_LAYER_RATIO of any group removed. Widths land on multiples of
    `round_to` (layers narrower than that are left alone). The classifier's outputs are never
    removed. The channel share that meets the budget is found by bisection on copies and the
    nearest achievable value is used: measure the result (`budget_count`) to see what was reached.
    A target more than TOLERANCE beyond the most that can be removed is an InputError, raised
    before the model is touched.

    Returns the plan: [{"layer": name, "dim": "out", "idxs": [...]}, ...] in application order,
    indices relative to the model at that moment; `replay_plan` repeats it on a fresh model.
    """
    if scope not in ("global", "layer"):
        raise InputError(f"unknown scope {scope!r} (choose from: global, layer)")
    if not (0.0 <= float(sparsity) < 1.0):
        raise InputError(f"sparsity must be in [0, 1) (the fraction removed), got {sparsity}")
    if not isinstance(round_to, int) or round_to < 1:
        raise InputError(f"round_to must be an integer >= 1 (1 = off), got {round_to!r}")
    base = budget_count(model, example_input, budget)
    if sparsity == 0 or base == 0:
        return []

    importance = ScoreImportance(scores, model, normalize=(scope == "global"), filter_scores=filter_scores)
    graph, groups, blocked = _discover(model, example_input, importance, scores)
    whole = kept_whole(model)
    if not groups and blocked:
        raise InputError(f"channel pruning cannot handle layer '{blocked[0]}' ({whole[blocked[0]]}), and every "
                         "channel group of this model passes through such a layer: use --granularity weight or 2:4")
    planner = _Planner(groups, scope, round_to)

    cache: dict[tuple[int, ...], float] = {tuple(g.size for g in groups): 0.0}

    def measure(keep: tuple[int, ...]) -> float:
        if keep not in cache:
            trial = copy.deepcopy(model)
            try:
                _apply(trial, _build_graph(trial, example_input), planner.steps(keep))
                with torch.no_grad(), _eval_mode(trial):
                    trial(example_input)
            except RuntimeError as e:   # shapes that no longer fit: a width fixed where Torch-Pruning cannot see it
                raise InputError(f"channel pruning leaves a model that no longer runs ({first_line(e)}); a layer "
                                 "fixes a width Torch-Pruning cannot follow (a reshape or view to a constant size?): "
                                 "use --granularity weight or 2:4") from None
            cache[keep] = 1.0 - budget_count(trial, example_input, budget) / base
        return cache[keep]

    def achieved(ratio: float) -> tuple[float, tuple[int, ...]]:
        keep = planner.keep(ratio)
        return measure(keep), keep

    def top_up(value: float, keep: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        # Rounding widths overshoots the budget; give channels back, one rounding unit at a time, to
        # the group cut hardest, for as long as the target still holds. Unused budget is accuracy lost.
        step = max(round_to, 1)
        while True:
            for i in sorted(range(len(groups)), key=lambda i: (keep[i] / groups[i].size, i)):
                grown = keep[:i] + (min(groups[i].size, keep[i] + step),) + keep[i + 1:]
                if grown != keep and measure(grown) >= sparsity:
                    value, keep = measure(grown), grown
                    break
            else:
                return value, keep

    hi_value, hi_keep = achieved(1.0)
    if hi_value < sparsity - TOLERANCE:
        raise InputError(
            f"channel sparsity {sparsity:g} ({budget}) is out of reach: removing up to "
            f"{MAX_LAYER_RATIO:.0%} of each layer's channels (round_to={round_to}) gives at most {hi_value:.3f}"
            + (f" with the channels through {', '.join(sorted(set(blocked)))} kept whole" if blocked else "")
            + f"; lower the target{' or round_to' if round_to > 1 else ''}"
        )
    lo, hi = 0.0, 1.0
    lo_value, lo_keep = achieved(0.0)
    if hi_value > sparsity:
        # achieved() is a step function of the ratio; 1e-5 is finer than one channel of any
        # group with fewer than 1e5 channels, so the two sides end up one step apart.
        while hi - lo > 1e-5:
            mid = (lo + hi) / 2
            value, keep = achieved(mid)
            if value >= sparsity:
                hi, hi_value, hi_keep = mid, value, keep
            else:
                lo, lo_value, lo_keep = mid, value, keep
    hi_value, hi_keep = top_up(hi_value, hi_keep)
    value, keep = (lo_value, lo_keep) if sparsity - lo_value < hi_value - sparsity else (hi_value, hi_keep)
    plan = planner.steps(keep)
    _apply(model, graph, plan)
    return plan


def replay_plan(model: nn.Module, example_input: torch.Tensor, plan: list[dict]) -> None:
    """Repeat a recorded plan on a fresh base model so its shapes match the pruned checkpoint.

    Weights are whatever `model` holds; load the pruned state_dict afterwards.
    """
    graph = _build_graph(model, example_input)
    modules = dict(model.named_modules())
    for i, step in enumerate(plan):
        if not isinstance(step, dict) or step.get("dim") != "out" or not isinstance(step.get("idxs"), list):
            raise InputError(f"pruning plan step {i} is malformed: {step!r}")
        module = modules.get(step["layer"])
        if not isinstance(module, PRUNABLE_TYPES):
            raise InputError(f"pruning plan step {i} names {step['layer']!r}, not a Conv/Linear layer of this model")
        width = graph.get_out_channels(module)
        idxs = step["idxs"]
        if not all(isinstance(j, int) and 0 <= j < width for j in idxs) or len(set(idxs)) >= width:
            raise InputError(f"pruning plan step {i} does not fit layer {step['layer']!r} ({width} channels)")
        graph.get_pruning_group(module, _out_fn(module), idxs).prune()
