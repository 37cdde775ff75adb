"""Backbones: images (B, C, H, W) floats in [0, 1] -> pooled features (B, out_dim).

ResNet-18/34/50 with the CIFAR stem (3x3 conv stride 1, no max-pool; for 32-96 px) or the ImageNet
stem (7x7 stride 2 + max-pool; for 224 px), and a small conv net for tiny images such as 8x8 digits.
Input standardisation lives in the backbone as buffers, so a saved or exported model takes raw
[0, 1] pixels.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
BACKBONES = (*RESNETS, "smallcnn")
STEMS = ("cifar", "imagenet")


class Standardize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers so they are saved and exported."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ResNetTrunk(nn.Module):
    """torchvision ResNet without its classifier; `stem` picks the first layers."""

    def __init__(self, name: str, stem: str, in_channels: int) -> None:
        super().__init__()
        net = RESNETS[name](weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """Four conv blocks (two at stride 2) and global average pooling, for 8-32 px images."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.out_dim = 4 * width
        self.net = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 2 * width),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Backbone(nn.Module):
    """Standardise, then the trunk. forward: (B, C, H, W) in [0, 1] -> (B, out_dim)."""

    def __init__(self, trunk: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.standardize = Standardize(mean, std)
        self.trunk = trunk
        self.out_dim: int = trunk.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.standardize(x))


def build_backbone(name: str, stem: str, in_channels: int, mean: list[float] | None = None,
                   std: list[float] | None = None) -> Backbone:
    """Build a backbone by name; mean/std default to identity standardisation."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {list(BACKBONES)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose from {list(STEMS)}")
    for what, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != in_channels:
            raise ValueError(f"standardisation {what} has {len(values)} values for {in_channels}-channel images: "
                             f"give one per channel")
    trunk = SmallCNN(in_channels) if name == "smallcnn" else ResNetTrunk(name, stem, in_channels)
    return Backbone(trunk, mean or [0.0] * in_channels, std or [1.0] * in_channels)
