"""Activation-based pruning (Ganguli & Chong, Algorithms 17(1):48, 2024; METHODS.md section 2).

Every hidden unit (a Linear layer's neuron, a Conv layer's output channel) has a counter of how
often its post-ReLU output is non-zero. A unit that rarely fires contributes little, so its
incoming weights are pruned first. The output layer has no counter and is never scored.

Counting follows the paper (active outputs, lowest pruned). `count="inactive"` counts zero outputs
instead, as the authors' July-2023 code does while still pruning the lowest counts: it removes the
*most* active units first and is offered only as an ablation (METHODS.md section 5.2).

Scores are per weight (higher = keep), so the shared `select` and schedules work with them; the
paper's accuracy-gated schedule and the physical removal of dead neurons are in `gated.py`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from edgeprune.errors import InputError
from edgeprune.pruning.base import Method, _is_int, register
from edgeprune.pruning.masks import prunable_layers, weight_of
from edgeprune.pruning.structured import _eval_mode

SCORES = ("neuron", "neuron_wts")
COUNTS = ("active", "inactive")
_NORMS = (nn.modules.batchnorm._BatchNorm,)


class ActivationCounter:
    """Forward hooks counting, per hidden unit, the outputs that pass the ReLU (are > 0).

    relu(z) != 0 exactly when z > 0, so the count is taken on the layer's output, or on the
    BatchNorm right after it (Conv -> BN -> ReLU), whichever feeds the activation; this works for
    ReLU modules and functional relu alike. A Linear unit counts samples; a Conv channel counts
    (sample, position) pairs, the per-channel extension METHODS.md section 2.7 suggests.
    `frequencies` divides by the number of chances, so units of different layers compare.
    Units sit on axis 1 of a Conv's or BatchNorm's output and on the last axis of a Linear's, so a
    Linear applied to tokens ([batch, tokens, features]) counts (sample, token) pairs. An attention's
    packed q/k/v projection has no output of its own: its units count positive projections of the
    query, key and value it is given (recomputed in a pre-hook; there is no ReLU after them).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.layers = prunable_layers(model, exclude_output=True)
        probes = _probes(model, self.layers, example_input)
        self.active = {name: torch.zeros(_units(m), dtype=torch.int64) for name, m in self.layers.items()}
        self.chances = {name: 0 for name in self.layers}
        self.enabled = True
        # An attention's out_proj never runs as a module (its weight is used inside the attention's
        # forward): its units are counted on the attention's output.
        owner = {m.out_proj: m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        self._hooks = []
        for name, probe in probes.items():
            if isinstance(probe, nn.MultiheadAttention):
                self._hooks.append(probe.register_forward_pre_hook(self._attention_hook(name), with_kwargs=True))
            else:
                linear = isinstance(probe, nn.Linear)
                self._hooks.append(owner.get(probe, probe).register_forward_hook(self._hook(name, -1 if linear else 1)))

    def _add(self, name: str, positive: torch.Tensor, unit_dim: int) -> None:
        rows = positive.movedim(unit_dim, -1).reshape(-1, positive.shape[unit_dim])
        self.active[name] += rows.sum(0).cpu()
        self.chances[name] += rows.shape[0]

    def _hook(self, name: str, unit_dim: int):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor | tuple) -> None:
            if isinstance(output, tuple):   # nn.MultiheadAttention: (output, weights)
                output = output[0]
            if self.enabled:
                self._add(name, output.detach() > 0, unit_dim if output.dim() > 1 else 0)
        return hook

    def _attention_hook(self, name: str):
        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
            if not self.enabled:
                return
            given = list(args) + [kwargs.get(k) for k in ("query", "key", "value")[len(args):]]
            w, b, e = module.in_proj_weight.detach(), module.in_proj_bias, module.embed_dim
            parts = [F.linear(t.detach(), w[i * e:(i + 1) * e], None if b is None else b.detach()[i * e:(i + 1) * e])
                     for i, t in enumerate(given[:3])]
            self._add(name, torch.cat(parts, -1) > 0, -1)
        return hook

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside this block are not counted."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    @torch.no_grad()
    def count(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
        """Add one pass over `batches` (eval mode, so BatchNorm uses its running statistics)."""
        with _eval_mode(model):
            for x in batches:
                model(x)

    def frequencies(self, count: str = "active") -> dict[str, torch.Tensor]:
        """Per unit, the share of chances on which it was active (or inactive), in [0, 1]."""
        out = {}
        for name, active in self.active.items():
            if self.chances[name] == 0:
                raise InputError("no activations were counted: activation pruning needs data")
            freq = active.double() / self.chances[name]
            out[name] = freq if count == "active" else 1.0 - freq
        return out

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _units(module: nn.Module) -> int:
    return weight_of(module).shape[0]


def _probes(model: nn.Module, layers: dict[str, nn.Module], example_input: torch.Tensor) -> dict[str, nn.Module]:
    """For each hidden layer, the module whose output decides its ReLU: the layer, or its BatchNorm."""
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in leaves]
    try:
        with _eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    probes = {}
    for name, layer in layers.items():
        probe = layer
        if layer in order:
            at = order.index(layer)
            if at + 1 < len(order) and isinstance(order[at + 1], _NORMS):
                probe = order[at + 1]
        probes[name] = probe
    return probes


@register
class Activation(Method):
    """Score of weight w_ij into hidden unit j: its activation frequency f_j ("neuron": every
    incoming weight of a unit shares it, so pruning is neuron-level) or f_j * |w_ij| ("neuron_wts":
    unstructured, magnitude modulated by activity). The `min_neurons` most active units of every
    hidden layer keep a chain of connections through the network, so a global threshold can never
    empty a layer.
    """

    name = "activation"
    # The paper's schedule: one-shot activation scores compact nothing and lost 25.6 pt at 94x, the
    # gated cycles 2.7 pt with dead neurons removed (issue 12); 14 epochs is the budget its figures
    # in README.md ("Activation-based pruning") were measured with.
    default_schedule = "gated"
    default_finetune_epochs = 14.0

    def __init__(self, seed: int = 0, score: str = "neuron_wts", count: str = "active", min_neurons: int = 10) -> None:
        super().__init__(seed)
        if score not in SCORES:
            raise InputError(f"unknown activation score {score!r} (choose from: {', '.join(SCORES)})")
        if count not in COUNTS:
            raise InputError(f"unknown activation count {count!r} (choose from: {', '.join(COUNTS)})")
        if not _is_int(min_neurons) or min_neurons < 1:
            raise InputError(f"min_neurons must be an integer >= 1, got {min_neurons!r}")
        self.score_type = score
        self.count = count
        self.min_neurons = min_neurons

    def counter(self, model: nn.Module, example_input: torch.Tensor) -> ActivationCounter:
        """Live counters on `model` (the gated schedule keeps them attached while it trains)."""
        return ActivationCounter(model, example_input)

    def collect(self, model: nn.Module, batches: Iterable[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Activation frequencies of every hidden unit over `batches`."""
        batches = list(batches or [])
        if not batches:
            raise InputError("activation pruning needs data to count activations")
        counter = self.counter(model, batches[0][:1])
        try:
            counter.count(model, batches)
        finally:
            counter.remove()
        return self.stats(counter)

    def stats(self, counter: ActivationCounter) -> dict[str, torch.Tensor]:
        """What `score` takes, read off live counters."""
        freqs = counter.frequencies(self.count)
        self.details = {"count": self.count, "score": self.score_type,
                        "never_active": {n: int((c == 0).sum()) for n, c in counter.active.items()}}
        return freqs

    @torch.no_grad()
    def score(self, model: nn.Module, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(stats, dict) or not stats:
            raise InputError("activation pruning needs activation counts: pass data (collect) first")
        layers = prunable_layers(model, exclude_output=True)
        scores: dict[str, torch.Tensor] = {}
        previous: torch.Tensor | None = None   # protected units of the layer before
        for name, layer in layers.items():
            w = weight_of(layer).detach()
            freq = stats[name].to(w.device, torch.float64)
            if freq.numel() != w.shape[0]:
                raise InputError(f"activation counts for {name!r} have {freq.numel()} units, the layer {w.shape[0]}")
            per_unit = freq.reshape(-1, *([1] * (w.dim() - 1)))
            s = per_unit.expand_as(w).clone() if self.score_type == "neuron" else per_unit * w.abs().double()
            previous = self._protect(s, w, freq, previous)
            scores[name] = s
        return scores

    def _protect(self, s: torch.Tensor, w: torch.Tensor, freq: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """Keep a skeleton: the `min_neurons` most active live units get one unprunable incoming
        weight each, from a protected unit of the layer before where the shapes connect, and every
        protected unit before gets one unprunable way out into them. Returns this layer's protected units."""
        alive = w.reshape(w.shape[0], -1).ne(0).any(1)
        if not alive.any():
            return torch.zeros(0, dtype=torch.long)
        candidates = torch.nonzero(alive).flatten()
        top = candidates[torch.sort(freq[candidates], descending=True, stable=True).indices[: self.min_neurons]]
        magnitude = w.abs().reshape(w.shape[0], w.shape[1], -1)
        grid = s.view(w.shape[0], w.shape[1], -1)
        spots = magnitude.shape[2]
        connects = previous is not None and previous.numel() > 0 and int(previous.max()) < w.shape[1]
        incoming = magnitude
        if connects:
            allowed = torch.zeros(w.shape[1], dtype=torch.bool, device=w.device)
            allowed[previous] = True
            incoming = magnitude.masked_fill(~allowed.reshape(1, -1, 1), -1.0)
        for j in top.tolist():
            i, k = divmod(int(torch.argmax(incoming[j].reshape(-1))), spots)
            grid[j, i, k] = float("inf")
        if connects:
            for p in previous.tolist():
                t, k = divmod(int(torch.argmax(magnitude[top, p].reshape(-1))), spots)
                grid[int(top[t]), p, k] = float("inf")
        return top
