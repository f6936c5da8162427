"""The accuracy-gated pruning schedule of Ganguli & Chong (METHODS.md sections 2.2-2.4), and the
removal of dead neurons.

Training runs with the method's counters attached. At the end of an epoch whose running training
accuracy reaches the next gate, one pruning event happens: global scope removes the next share of
the exponentially decaying schedule (shares b^i / sum_j b^j, b = 0.8; see `event_targets`) from all
hidden layers at once; local scope prunes the next hidden layer (first layer first) to the target fraction. After
every event, neurons whose incoming weights are all pruned lose their outgoing weights too, their
constant output relu(b_j) folded into the next layer's bias first so the network computes the same
function. When the events are done the dead neurons are removed physically (Torch-Pruning), and the
smaller network retrains until its training accuracy reaches the target or the budget runs out.

Departures from the paper, each because of the budget: training is Adam with cosine decay (the
project's loop) instead of Keras SGD at lr 0.01 for up to 500 epochs; the events must be done within
the first PRUNE_SHARE of the epoch budget, so a gate not reached by its deadline fires anyway (the
report marks it `forced`); training starts from the trained model `compress` is given, not from
initialisation; the decaying shares apply to the log of the kept fraction (`event_targets`). The
counters start with one pass over calibration images and then add every
training batch until the last event, as the paper's August-2022 code does.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from edgeprune.data import ArrayDataset
from edgeprune.pruning.base import PruneSpec, get_method
from edgeprune.pruning.masks import PRUNABLE_TYPES, apply_masks, masks_from_model, prunable_layers, select, weight_of
from edgeprune.pruning.schedule import PruneResult, PruneStep
from edgeprune.pruning.structured import _IN_FNS, _OUT_FNS, _build_graph, _eval_mode, _out_fn, replay_plan

GATE_START = 0.80     # training accuracy that opens the first pruning event (the paper's a_start)
DECAY = 0.8           # b: each global event removes 0.8x the share of the one before
PRUNE_SHARE = 0.5     # events must be done within this share of the epoch budget; the rest retrains
TARGET_SLACK = 1e-4   # a global event may end this far under its target sparsity ...
SEARCH_TRIALS = 16    # ... or as close as this many trial selections get


def cycle_fractions(n: int, total: float, decay: float = DECAY) -> list[float]:
    """Per-event share of all prunable weights, p_i = total * decay^i / sum_j decay^j; sums to total."""
    weights = [decay ** i for i in range(n)]
    return [total * w / sum(weights) for w in weights]


def event_targets(n: int, sparsity: float, decay: float = DECAY) -> list[float]:
    """Cumulative sparsity after each global event: the paper's decaying shares, taken of the log of
    the kept fraction, kept_i = kept ** (share of events 0..i).

    The paper's linear form (sparsity_i = sum of p_j) ends on its largest relative cut: at 98.94 %
    its last event removes 92 % of the weights still there, and on fc5 with 6 epochs that left the
    network at chance (10 % validation accuracy) and 75.9 % test accuracy after retraining; this form
    removes 74, 66, 58, 49 and 44 % of what remains and reached 79.9 % (one tuning run each).
    """
    shares = cycle_fractions(n, 1.0, decay)
    return [1.0 - (1.0 - sparsity) ** sum(shares[: i + 1]) for i in range(n)]


def gates(n: int, final: float, start: float = GATE_START) -> list[float]:
    """Training-accuracy gate of each event: start + i (final - start) / n (the paper's code)."""
    start = min(start, final)
    return [start + i * (final - start) / n for i in range(n)]


# ------------------------------------------------------------------------------------ dead units
@dataclass
class _Consumers:
    """Where the units of one hidden layer go: per consumer layer, an index matrix [units, k]
    (row j: the consumer's inputs fed by unit j; k > 1 after a Flatten)."""

    links: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    units: int = 0
    coupled: bool = False   # shares its channels with another layer (a residual add), or irregular: never removed


def _consumers(model: nn.Module, example_input: torch.Tensor, hidden: dict[str, nn.Module]) -> dict[str, _Consumers]:
    graph = _build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    out: dict[str, _Consumers] = {}
    for name, layer in hidden.items():
        units = weight_of(layer).shape[0]
        info = _Consumers(units=units)
        if not isinstance(layer, PRUNABLE_TYPES):   # an attention's q/k/v rows are not units of their own
            out[name] = _Consumers(units=units, coupled=True)
            continue
        for item in graph.get_pruning_group(layer, _out_fn(layer), list(range(units))):
            module, fn = item.dep.target.module, item.dep.handler
            if fn in _OUT_FNS and module is not layer:
                info.coupled = True
            if fn in _IN_FNS and names.get(module) is not None:
                per_unit: list[list[int]] = [[] for _ in range(units)]
                for idx, root in zip(item.idxs, item.root_idxs):
                    per_unit[root].append(int(idx))
                if len({len(p) for p in per_unit}) != 1 or not per_unit[0]:
                    info.coupled = True
                    continue
                info.links.append((names[module], torch.tensor([sorted(p) for p in per_unit], dtype=torch.long)))
        out[name] = info
    return out


@torch.no_grad()
def _consumer_inputs(model: nn.Module, names: set[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_pre_hook(lambda m, i, n=n: seen.setdefault(n, i[0].detach()))
             for n in names]
    try:
        with _eval_mode(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _incoming(masks: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    m = masks[name]
    return m.reshape(m.shape[0], -1).any(1)


def _outgoing(masks: dict[str, torch.Tensor], info: _Consumers) -> torch.Tensor:
    alive = torch.zeros(info.units, dtype=torch.bool)
    for c, idx in info.links:
        alive |= masks[c][:, idx].transpose(0, 1).reshape(info.units, -1).any(1)
    return alive


@torch.no_grad()
def _fold(consumer: nn.Module, idx: torch.Tensor, inputs: torch.Tensor, apply: bool) -> torch.Tensor:
    """Which units (rows of `idx`) feed `consumer` a constant it can take into its bias exactly;
    with `apply`, also adds those constants to the bias."""
    if idx.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    vals = inputs[:, idx]                                   # [N, units, k, *spatial]
    flat = vals.transpose(0, 1).reshape(idx.shape[0], -1)
    constant = ((flat - flat[:, :1]).abs() <= 1e-6 * (1 + flat[:, :1].abs())).all(1)
    zero = constant & (flat[:, 0] == 0)
    if consumer.bias is None:
        return zero
    w = consumer.weight
    if isinstance(consumer, nn.Linear):
        ok = constant
        value = vals[0]                                     # [units, k]
        contribution = (w[:, idx].double() * value.double()).sum(2)  # [out, units]
    else:
        padding = consumer.padding if isinstance(consumer.padding, tuple) else (consumer.padding,)
        # zero padding makes border positions see less of a constant, so only unpadded, ungrouped convs fold exactly
        if consumer.groups != 1 or isinstance(consumer.padding, str) or any(p != 0 for p in padding):
            return zero
        ok = constant
        value = vals[0].reshape(idx.shape[0], idx.shape[1], -1)[:, :, 0]
        contribution = (w[:, idx].double().flatten(3).sum(3) * value.double()).sum(2)
    if apply:
        consumer.bias += contribution[:, ok].sum(1).to(w.dtype)
    return ok


@torch.no_grad()
def retire_dead_units(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor,
                      consumers: dict[str, _Consumers]) -> None:
    """Make every dead hidden unit removable without changing the network's outputs.

    A unit is dead when all its incoming weights are pruned: it outputs a constant, which is folded
    into its consumers' biases before their weights from it are pruned. A unit whose outgoing weights
    are all pruned has its incoming weights pruned too (they do nothing). Repeats until nothing
    changes, since either can create the other one layer over. Updates `masks` and the weights in place.
    """
    modules = dict(model.named_modules())
    while True:
        changed = False
        for name, info in consumers.items():
            if not info.links:
                continue
            orphans = _incoming(masks, name) & ~_outgoing(masks, info)
            if orphans.any():
                masks[name][orphans] = False
                changed = True
        apply_masks(model, masks)
        dead = {name: ~_incoming(masks, name) & _outgoing(masks, info)
                for name, info in consumers.items() if info.links}
        dead = {name: d for name, d in dead.items() if d.any()}
        if dead:
            seen = _consumer_inputs(model, {c for name in dead for c, _ in consumers[name].links}, x)
            for name, d in dead.items():
                units = torch.nonzero(d).flatten()
                links = consumers[name].links
                # a unit goes only if every consumer can take its constant
                ok = torch.ones(len(units), dtype=torch.bool)
                for c, idx in links:
                    ok &= _fold(modules[c], idx[units], seen[c], apply=False)
                for c, idx in links:
                    _fold(modules[c], idx[units[ok]], seen[c], apply=True)
                for c, idx in links:
                    masks[c][:, idx[units[ok]].flatten()] = False
                changed = changed or bool(ok.any())
            apply_masks(model, masks)
        if not changed:
            return


def removable_units(masks: dict[str, torch.Tensor], consumers: dict[str, _Consumers]) -> dict[str, list[int]]:
    """Per hidden layer, the units with no incoming and no outgoing weights left (never a whole layer)."""
    out = {}
    for name, info in consumers.items():
        if info.coupled or not info.links:
            continue
        gone = ~_incoming(masks, name) & ~_outgoing(masks, info)
        if gone.any() and not gone.all():
            out[name] = torch.nonzero(gone).flatten().tolist()
    return out


def compact(model: nn.Module, masks: dict[str, torch.Tensor], example_input: torch.Tensor,
            removable: dict[str, list[int]]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Physically remove `removable` units (Torch-Pruning); returns the plan and the masks in the new shapes.

    The plan has structured.py's format, so `model_io` rebuilds the compacted model by replaying it.
    """
    plan = [{"layer": name, "dim": "out", "idxs": idxs} for name, idxs in removable.items()]
    if not plan:
        return [], masks
    # The masks follow the weights through the same surgery: carried as 0/1 weights of a copy.
    carrier = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in prunable_layers(carrier).items():
            weight_of(layer).copy_(masks[name].to(weight_of(layer).dtype))
    replay_plan(carrier, example_input, plan)
    replay_plan(model, example_input, plan)
    return plan, {name: weight_of(layer) != 0 for name, layer in prunable_layers(carrier).items()}


# ------------------------------------------------------------------------------------ the schedule
def _prune_into(model: nn.Module, masks: dict[str, torch.Tensor], chosen: dict[str, torch.Tensor], x: torch.Tensor,
                consumers: dict[str, _Consumers]) -> float:
    """Apply `chosen` keep-masks and retire the dead units it leaves; returns the sparsity reached."""
    for k, keep in chosen.items():
        masks[k] &= keep
    retire_dead_units(model, masks, x, consumers)   # applies the masks before it reads anything
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def _prune_global(model: nn.Module, masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], target: float,
                  x: torch.Tensor, consumers: dict[str, _Consumers]) -> None:
    """Remove the lowest-scoring hidden weights so that, dead units retired, `target` of all weights are gone.

    Retiring dead units removes more than was selected (a neuron left without inputs takes its
    outputs along, one without outputs its inputs), so the count selected is the largest one whose
    result stays at or under the target, found by regula falsi (bisection on plateaus) on copies;
    where one more step overshoots by less than that count falls short, the overshoot is taken.
    """
    total = sum(m.numel() for m in masks.values())
    pruned_now = total - sum(int(m.sum()) for m in masks.values())
    names = list(scores)
    flats = [scores[k].reshape(-1).float() for k in names]
    sizes = [f.numel() for f in flats]
    # one ranking for every trial: pruned weights (-inf) first, ties in layer-then-index order as in
    # masks.select, each layer's best weight never (so a method without a skeleton keeps layers too)
    ranked = torch.cat(flats)
    offset = 0
    for f in flats:
        ranked[offset + int(torch.argmax(f))] = float("inf")
        offset += f.numel()
    order = torch.sort(ranked, stable=True).indices
    already = int((ranked == float("-inf")).sum())
    removable = int((ranked != float("inf")).sum())

    def chosen(need: int) -> dict[str, torch.Tensor]:
        keep = torch.ones(ranked.numel(), dtype=torch.bool)
        keep[order[: min(already + need, removable)]] = False
        return {k: part.reshape(scores[k].shape) for k, part in zip(names, keep.split(sizes))}

    def trial(need: int) -> float:
        return _prune_into(copy.deepcopy(model), {k: m.clone() for k, m in masks.items()}, chosen(need), x, consumers)

    need = round(target * total) - pruned_now
    if need <= 0:
        return
    hi, at_hi = need, trial(need)
    if at_hi > target + TARGET_SLACK:
        # regula falsi on the count selected: the sparsity reached grows with it, nearly linearly
        lo, at_lo = 0, pruned_now / total
        for _ in range(SEARCH_TRIALS):
            guess = lo + int((hi - lo) * (target - at_lo) / max(at_hi - at_lo, 1e-12))
            if guess <= lo or guess >= hi:
                # neuron scores tie in blocks, so the sparsity reached is a step function and the
                # secant can stall on a plateau: bisect instead
                guess = (lo + hi) // 2
                if guess <= lo:
                    break
            reached = trial(guess)
            if reached <= target:
                lo, at_lo = guess, reached
            else:
                hi, at_hi = guess, reached
            if target - at_lo <= TARGET_SLACK:
                break
        # at or under the target unless a single step jumps over it by more than it falls short
        need = lo if target - at_lo <= at_hi - target else hi
    _prune_into(model, masks, chosen(need), x, consumers)


def prune_gated(model: nn.Module, spec: PruneSpec, example_input: torch.Tensor, train_set: ArrayDataset,
                cfg, *, calib: Iterable[torch.Tensor], val_set: ArrayDataset | None = None,
                progress: bool = True) -> PruneResult:
    """Prune `model` in place with the accuracy-gated schedule; `cfg.epochs` is the whole budget
    (pruning events and retraining). `spec.steps` is the number of global events (local: one per
    hidden layer), `spec.target_accuracy` the last gate and the retraining stop."""
    from edgeprune.training import TrainConfig, evaluate, train

    spec.validate()
    method = get_method(spec.method, seed=spec.seed, **spec.options)
    calib = list(calib)
    hidden = prunable_layers(model, exclude_output=True)
    masks = masks_from_model(model)
    total = sum(m.numel() for m in masks.values())
    hidden_total = sum(masks[n].numel() for n in hidden)
    consumers = _consumers(model, example_input, hidden)
    probe_x = calib[0]

    live = getattr(method, "counter", None)
    counter = live(model, example_input) if live is not None else None
    if counter is not None:
        counter.count(model, calib)

    if spec.scope == "local":
        names = list(hidden)
        n = len(names)
        per_layer = min(spec.sparsity * total / max(hidden_total, 1), 0.999)
        targets = [per_layer] * n
    else:
        names = []
        n = spec.steps
        targets = event_targets(n, spec.sparsity)
    gate_list = gates(n, spec.target_accuracy)
    prune_epochs = cfg.epochs * PRUNE_SHARE
    deadlines = [prune_epochs * (i + 1) / n for i in range(n)]
    events: list[dict] = []
    result = PruneResult(masks=None)
    clock = {"last": time.perf_counter()}

    def fire(epoch: float, accuracy: float | None, forced: bool) -> None:
        i = len(events)
        start = time.perf_counter()
        stats = method.stats(counter) if counter is not None else method.collect(model, calib)
        scores = method.score(model, stats)
        scores = {k: s.masked_fill(~masks[k], float("-inf")) for k, s in scores.items() if k in hidden}
        # the probing forward passes below (also on copies, which share the hooks) are not samples
        with counter.paused() if counter is not None else contextlib.nullcontext():
            if spec.scope == "local":
                _prune_into(model, masks, select({names[i]: scores[names[i]]}, targets[i], "layer"), probe_x, consumers)
            else:
                _prune_global(model, masks, scores, targets[i], probe_x, consumers)
        achieved = 1.0 - sum(int(m.sum()) for m in masks.values()) / total
        now = time.perf_counter()
        events.append({"event": i + 1, "epoch": epoch, "train_accuracy": accuracy, "gate": gate_list[i],
                       "forced": forced, "target": targets[i] if spec.scope != "local" else spec.sparsity,
                       "achieved": achieved, **({"layer": names[i]} if spec.scope == "local" else {})})
        result.steps.append(PruneStep(i + 1, events[-1]["target"], achieved, now - start, start - clock["last"]))
        clock["last"] = now
        if spec.scope == "local" and i + 1 < n and accuracy is not None:
            gate_list[i + 1] = accuracy   # the paper's layer-wise gate: the accuracy at the last event

    def on_epoch_end(epoch: int, accuracy: float) -> bool:
        if len(events) < n:
            i = len(events)
            if accuracy >= gate_list[i] or epoch >= deadlines[i] - 1e-9:
                fire(epoch, accuracy, accuracy < gate_list[i])
            while len(events) < n and epoch >= deadlines[len(events)] - 1e-9:
                fire(epoch, accuracy, True)
        return len(events) >= n

    per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    pruning_epochs = 0.0
    if prune_epochs > 0:
        log = train(model, train_set, TrainConfig(epochs=prune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                                  seed=cfg.seed), masks=masks, progress=progress,
                    description="prune (gated)", on_epoch_end=on_epoch_end)
        pruning_epochs = log.steps / per_epoch
    while len(events) < n:   # no training budget: every event at once, on the calibration counts
        fire(0.0, None, True)
    if counter is not None:
        counter.remove()
    val_before = evaluate(model, val_set) if val_set is not None else None

    start = time.perf_counter()
    plan, masks = compact(model, masks, example_input, removable_units(masks, consumers))
    result.steps[-1].seconds += time.perf_counter() - start

    retraining_epochs = 0.0
    rest = (round(cfg.epochs * per_epoch) - round(pruning_epochs * per_epoch)) / per_epoch
    if rest > 0:
        start = time.perf_counter()
        log = train(model, train_set, TrainConfig(epochs=rest, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed + 1),
                    masks=masks, progress=progress, description="retrain",
                    on_epoch_end=lambda e, acc: acc >= spec.target_accuracy)
        retraining_epochs = log.steps / per_epoch
        result.steps[-1].finetune_seconds += time.perf_counter() - start

    result.masks, result.plan = masks, plan
    result.seconds = sum(s.seconds for s in result.steps)
    removed = {step["layer"]: len(step["idxs"]) for step in plan}
    result.details = {**method.details, "scope": spec.scope, "events": events,
                      "pruning_epochs": pruning_epochs, "retraining_epochs": retraining_epochs,
                      "epochs": pruning_epochs + retraining_epochs,
                      "val_accuracy_before_retraining": val_before,
                      "removed_units": removed,
                      "widths": {k: int(weight_of(m).shape[0]) for k, m in prunable_layers(model).items()}}
    return result
