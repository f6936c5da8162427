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


# --- user factories, as a user's own package would define them (--arch tests.tiny:NAME) -----------
def digits_mlp(width: int = 32) -> nn.Sequential:
    """An MLP for 1x8x8 digits whose factory takes none of the zoo's arguments (in_channels, ...)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def digits_cnn(in_channels: int, num_classes: int = 10, width: int = 8) -> nn.Sequential:
    """Takes in_channels and num_classes but not image_size (it pools to 2x2 whatever the size)."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(width * 4, num_classes))


def any_kwargs_mlp(**kw) -> nn.Sequential:
    """A **kwargs factory: edgeprune passes it every argument it can supply."""
    width = kw.get("width", 16)
    return nn.Sequential(nn.Flatten(), nn.Linear(kw["in_channels"] * kw["image_size"] ** 2, width), nn.ReLU(),
                         nn.Linear(width, kw["num_classes"]))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, image, mask):
        return self.fc(image.flatten(1) * mask.flatten(1))


class Tokens(nn.Module):
    """Takes integer token ids (an nn.Embedding first), not images."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, ids):
        return self.fc(self.embed(ids).mean(1))
