"""The Method interface, the pruning spec and the method registry.

Every pruning method is collect -> score -> select (DESIGN.md "Method"). A method only implements
`score` (and `collect` when it needs data); selection, schedules and physical channel removal are
shared, so adding a method is one file in this package that decorates its class with `@register`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from edgeprune.errors import InputError, UnknownNameError

GRANULARITIES = ("weight", "channel", "2:4")
# "local" (one layer per pruning event) and "gated" (accuracy-gated cycles) are the schedule of
# activation-based pruning (edgeprune/pruning/gated.py); local exists only under gated.
SCOPES = ("global", "layer", "local")
SCHEDULES = ("oneshot", "iterative", "gated")
BUDGETS = ("params", "macs")


@dataclass
class PruneSpec:
    """What to prune and how much. `sparsity` is always the fraction removed (never kept)."""

    method: str = "magnitude"
    sparsity: float = 0.5
    granularity: str = "weight"
    # None = the method's own default (Method.default_scope: "global" for most, "layer" for
    # spectral, whose thresholds are per layer by design); validate() fills it in.
    scope: str | None = None
    # None = the method's own (Method.default_schedule: the accuracy-gated cycles for activation,
    # one-shot for the others); validate() fills it in.
    schedule: str | None = None
    steps: int = 5
    budget: str = "params"
    round_to: int = 8
    seed: int = 0
    # Method-specific options (e.g. spectral's attenuation), passed to the method's constructor;
    # a name the method does not take is an InputError.
    options: dict[str, Any] = field(default_factory=dict)
    # Gated schedule: the training accuracy that ends retraining and tops the gates (0.80 -> it).
    target_accuracy: float = 0.98

    def validate(self) -> None:
        """Raise InputError / UnknownNameError for values a user got wrong."""
        method = method_class(self.method)   # raises with the list of available names
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise InputError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        # `not (a <= x < b)` also rejects NaN
        if not (0.0 <= float(self.sparsity) < 1.0):
            raise InputError(f"sparsity must be in [0, 1) (the fraction removed), got {self.sparsity}")
        _check_choice("granularity", self.granularity, GRANULARITIES)
        if self.scope is None:
            self.scope = method.default_scope
        _check_choice("scope", self.scope, SCOPES)
        chosen = self.schedule is not None
        if not chosen:
            self.schedule = method.default_schedule
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("budget", self.budget, BUDGETS)
        if self.scope == "local" and self.schedule != "gated":
            raise InputError("scope 'local' (one layer per pruning event) needs schedule 'gated'; "
                             "use scope 'layer' for the same fraction in every layer")
        if self.schedule == "gated":
            if self.granularity != "weight":
                raise InputError("schedule 'gated' prunes weights and removes dead neurons itself; use granularity 'weight'"
                                 + ("" if chosen else f" (it is method {self.method!r}'s default: pass --schedule "
                                                      "oneshot or iterative for another granularity)"))
            if isinstance(self.target_accuracy, bool) or not isinstance(self.target_accuracy, (int, float)) \
                    or not (0.0 < float(self.target_accuracy) <= 1.0):
                raise InputError(f"target accuracy must be in (0, 1], got {self.target_accuracy!r}")
        if self.budget == "macs" and self.granularity != "channel":
            # unstructured zeros are still multiplied by every runtime we target
            raise InputError("budget 'macs' needs granularity 'channel': zeroed weights do not reduce executed MACs")
        if self.granularity == "2:4" and float(self.sparsity) != 0.5:
            raise InputError("granularity 2:4 removes exactly 2 of every 4 weights: "
                             f"sparsity must be 0.5 (or omitted), got {self.sparsity}")
        if self.granularity == "2:4" and self.schedule != "oneshot":
            raise InputError("granularity 2:4 is one fixed pattern: use schedule 'oneshot' (fine-tuning keeps the masks)")
        if not _is_int(self.steps) or self.steps < 1:
            raise InputError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not _is_int(self.round_to) or self.round_to < 1:
            raise InputError(f"round_to must be an integer >= 1 (1 = off), got {self.round_to!r}")
        if not _is_int(self.seed):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        get_method(self.method, seed=self.seed, **self.options)  # rejects unknown or bad options


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {field} {value!r} (choose from: {', '.join(choices)})")


class Method(ABC):
    """A pruning criterion: `collect` statistics, then `score` every prunable weight.

    Scores are per weight and have the weight's shape; higher means keep. Channel pruning
    aggregates them per channel, so one score function serves both granularities.
    """

    name: ClassVar[str]
    # The selection scope when the user names none (PruneSpec.scope None).
    default_scope: ClassVar[str] = "global"
    # The schedule (PruneSpec.schedule None) and training budget in epochs (api.compress's
    # finetune_epochs None) a method runs with when the user names none.
    default_schedule: ClassVar[str] = "oneshot"
    default_finetune_epochs: ClassVar[float] = 2.0

    def __init__(self, seed: int = 0) -> None:
        # Methods with options take them as keyword arguments after `seed` (with defaults) and
        # raise InputError for bad values; `get_method` turns unknown names into InputError.
        self.seed = seed
        # What the method measured that a user should see (e.g. spectral flatness before/after,
        # neurons removed); JSON-able. `prune` returns it and `compress` reports and saves it.
        self.details: dict[str, Any] = {}

    def collect(self, model: nn.Module, batches: Iterable[torch.Tensor] | None) -> Any:
        """Gather what `score` needs (activations, spectra, ...). Weight-only methods need nothing."""
        return None

    def filter_scores(self, model: nn.Module, stats: Any) -> dict[str, torch.Tensor] | None:
        """Whole-filter scores (one per output channel; higher = keep) for granularity "channel", for the
        layers whose filters the method ranks itself; other layers aggregate `score` over their
        Torch-Pruning group (structured.ScoreImportance). None (the default) for all layers."""
        return None

    def finish(self, model: nn.Module, batches: Iterable[torch.Tensor] | None) -> None:
        """Called once on the final model (after the last step and its fine-tune), e.g. to measure into
        `self.details` what pruning changed. Most methods need nothing."""

    @abstractmethod
    def score(self, model: nn.Module, stats: Any) -> dict[str, torch.Tensor]:
        """Map each prunable layer's qualified name to per-weight scores (weight's shape; higher = keep)."""


_REGISTRY: dict[str, type[Method]] = {}
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` selectable by its `name` (the CLI's --method)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute `name`")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"method name {name!r} is taken by {existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    # Importing every module of this package lets a new method live in one file without a
    # central list to edit; registration happens as a side effect of the import.
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered as `name` (its defaults: default_scope, default_schedule, ...)."""
    _discover()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownNameError(f"unknown method {name!r} (available: {', '.join(available_methods())})")
    return cls


def get_method(name: str, seed: int = 0, **options: Any) -> Method:
    """A fresh instance of the method registered as `name`; `seed` drives any randomness it has,
    `options` are the method's own settings (InputError for a name it does not take)."""
    cls = method_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in options:
        if key == "seed" or (key not in params and not takes_any):
            known = [k for k in params if k not in ("self", "seed")]
            raise InputError(f"method {name!r} has no option {key!r}"
                             + (f" (its options: {', '.join(known)})" if known else " (it takes no options)"))
    return cls(seed=seed, **options)
