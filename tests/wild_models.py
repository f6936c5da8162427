"""Models in the shapes people bring, written out here so edgeprune depends on no model zoo:
a ResNet-18, MobileNetV2-style inverted residuals (depthwise convolutions, squeeze-and-excitation),
grouped convolutions, a small vision transformer (nn.MultiheadAttention, LayerNorm, a reshape
that fixes the embedding width) and a segmentation head (one prediction per pixel).

Every factory takes the keyword arguments edgeprune's architecture references pass
(`in_channels`, `num_classes`, `image_size`), so `tests.wild_models:NAME` works as `--arch`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


# ---------------------------------------------------------------- ResNet-18 (torchvision's layout)
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 (7x7 stem, max-pool, 2-2-2-2 basic blocks, 64..512 channels);
    `width` scales every stage (64 = the real network)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64, image_size: int = 224) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(in_channels, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], w[0]
        for i, cout in enumerate(w):
            layers.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(in_channels: int = 3, num_classes: int = 10, image_size: int = 224, width: int = 64) -> nn.Module:
    return ResNet18(in_channels, num_classes, width, image_size)


# ---------------------------------------------------------------- MobileNetV2 blocks with SE
class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> (SE) -> 1x1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, se: bool = False) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


def mobilenet(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2, se=True), InvertedResidual(24, 24, 1, se=True),
        InvertedResidual(24, 32, 2),
        nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


# ---------------------------------------------------------------- grouped convolutions (ResNeXt-style)
class GroupedBlock(nn.Module):
    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.grouped = nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.grouped(F.relu(self.bn1(self.reduce(x))))))


def grouped(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 32, 3, 2, 1), nn.ReLU(), GroupedBlock(32), GroupedBlock(32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


# ---------------------------------------------------------------- a small vision transformer
class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, patch: int = 8,
                 dim: int = 64, heads: int = 4, depth: int = 2, mlp: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        # The width is fixed here, as in many hand-written ViTs: cutting embedding channels breaks it.
        x = x.flatten(2).transpose(1, 2).reshape(x.shape[0], -1, self.dim) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1))


def vit(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return ViT(in_channels, num_classes, image_size)


# ---------------------------------------------------------------- segmentation: logits per pixel
def segnet(in_channels: int = 3, num_classes: int = 4, image_size: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(32, 16, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(16, num_classes, 1))


# name -> (factory, input shape) for the tests
MODELS = {
    "resnet18": (resnet18, (3, 224, 224)),
    "mobilenet": (mobilenet, (3, 32, 32)),
    "grouped": (grouped, (3, 32, 32)),
    "vit": (vit, (3, 32, 32)),
    "segnet": (segnet, (3, 32, 32)),
}
