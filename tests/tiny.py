"""Tiny models shared by the pruning tests: an MLP for digits-sized inputs (64 features)."""

import torch
from torch import nn


def mlp(seed: int = 0) -> nn.Sequential:
    """64-32-16-10 MLP, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


class Unexportable(nn.Module):
    """A 28x28 classifier ending in an operator no ONNX exporter translates (Hurwitz zeta)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return torch.special.zeta(y.abs() + 2.0, torch.ones_like(y))
