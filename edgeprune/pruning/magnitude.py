"""Magnitude pruning (keep the largest |w|) and random pruning, its control."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeprune.pruning.base import Method, register
from edgeprune.pruning.masks import prunable_layers, weight_of


@register
class Magnitude(Method):
    """Score = |w|. Global scope is Han et al.'s global magnitude pruning; layer scope is per layer."""

    name = "magnitude"

    def score(self, model: nn.Module, stats: Any) -> dict[str, torch.Tensor]:
        return {name: weight_of(m).detach().abs().clone() for name, m in prunable_layers(model).items()}


@register
class Random(Method):
    """Uniform random scores from `seed`: any method worth using must beat this at equal sparsity."""

    name = "random"

    def score(self, model: nn.Module, stats: Any) -> dict[str, torch.Tensor]:
        # A fresh generator per call: the same seed gives the same ranking at every iterative step,
        # so iterative random pruning removes weights in one consistent order.
        gen = torch.Generator().manual_seed(self.seed)
        return {
            name: torch.rand(weight_of(m).shape, generator=gen).to(weight_of(m).device)
            for name, m in prunable_layers(model).items()
        }
