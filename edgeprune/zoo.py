"""Reference architectures, defined here because torchvision does not import with this torch.

Every factory takes its widths as arguments (JSON-able), plus ``in_channels``, ``image_size`` and
``num_classes``, so a model is fully described by ``zoo:NAME`` + kwargs and a compacted model can be
rebuilt from its base architecture on a fresh machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import UnknownNameError


def _mlp(hidden: Sequence[int], in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def lenet300(hidden: Sequence[int] = (300, 100), in_channels: int = 1, image_size: int = 28,
             num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 (Han et al. 2015): 784-300-100-10 on 28x28 inputs."""
    return _mlp(hidden, in_channels, image_size, num_classes)


def fc5(hidden: Sequence[int] = (300, 200, 100, 50), in_channels: int = 1, image_size: int = 28,
        num_classes: int = 10) -> nn.Module:
    """The 784-300-200-100-50-10 MLP of Ganguli & Chong (Algorithms 2024)."""
    return _mlp(hidden, in_channels, image_size, num_classes)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling; both convs padded so 8x8 inputs work too."""

    def __init__(self, widths: Sequence[int] = (6, 16), fc: Sequence[int] = (120, 84),
                 in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        c1, c2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = _mlp(fc, c2, side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """CIFAR-style residual block; a 1x1 conv + BN shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): three stages, `blocks` per stage."""

    def __init__(self, blocks: int = 1, widths: Sequence[int] = (32, 64, 128), in_channels: int = 1,
                 image_size: int = 28, num_classes: int = 10):
        super().__init__()
        del image_size  # global average pooling makes the network size-agnostic
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                stages.append(BasicBlock(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet8(widths: Sequence[int] = (32, 64, 128), **kw) -> nn.Module:
    """ResNet-8: one block per stage (stem + 3x2 convs + fc)."""
    return ResNet(blocks=1, widths=widths, **kw)


def resnet20(widths: Sequence[int] = (16, 32, 64), **kw) -> nn.Module:
    """ResNet-20: three blocks per stage."""
    return ResNet(blocks=3, widths=widths, **kw)


class VGGSmall(nn.Module):
    """A small VGG: three stages of two 3x3 conv+BN+ReLU and a max-pool, then one FC layer."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128), in_channels: int = 1, image_size: int = 28,
                 num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        del image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


ZOO: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "fc5": fc5,
    "lenet5": LeNet5,
    "resnet8": resnet8,
    "resnet20": resnet20,
    "vgg_small": VGGSmall,
}


def zoo_names() -> list[str]:
    return sorted(ZOO)


def zoo_factory(name: str) -> Callable[..., nn.Module]:
    """The factory of ``zoo:NAME``; UnknownNameError for a name not in the zoo."""
    if name not in ZOO:
        raise UnknownNameError(f"unknown architecture 'zoo:{name}' (available: {', '.join('zoo:' + n for n in zoo_names())})")
    return ZOO[name]


def build_zoo(name: str, **kwargs) -> nn.Module:
    """Build ``zoo:NAME`` with the given kwargs; UnknownNameError for a name not in the zoo."""
    return zoo_factory(name)(**kwargs)
