"""Tiny models shared by the pruning tests: an MLP for digits-sized inputs (64 features)."""

import torch
from torch import nn


def mlp(seed: int = 0) -> nn.Sequential:
    """64-32-16-10 MLP, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
