"""CIFAR ResNets (He et al., 2016, Sec. 4.2): ResNet-20/32/56/110.

3x3 conv stem (16 channels), three stages of ``n`` BasicBlocks with 16/32/64 channels
(depth = 6n + 2), global average pooling and ``classifier = nn.Linear(64, num_classes)``.
Shortcuts are identity when the shape is kept and a **projection (1x1 conv + BN, "option B")**
when the stride or width changes, so every residual add is between two prunable tensors
and torch-pruning couples them through its dependency graph.

With 3x32x32 input and 10 classes, ResNet-20 has 272,474 parameters
(269,722 for the zero-padding "option A" variant + 2,752 for the two projections)
and about 41 M multiply-accumulates.

Final classifier: ``model.classifier``.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .helpers import init_weights
from .registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 widths=(16, 32, 64), zero_init_residual: bool = False):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, w in enumerate(widths):
            blocks: List[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, w, stride))
                in_planes = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        zero_bns = [m.bn2 for m in self.modules() if isinstance(m, BasicBlock)] if zero_init_residual else []
        init_weights(self, zero_bns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.flatten(self.avgpool(x)))


def _resnet(depth: int, num_classes: int, in_channels: int, **kwargs) -> CifarResNet:
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (3x3 BasicBlocks, 16/32/64, 1x1-conv+BN projection shortcuts)."""
    return _resnet(20, num_classes, in_channels, **kwargs)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (5 BasicBlocks per stage)."""
    return _resnet(32, num_classes, in_channels, **kwargs)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (9 BasicBlocks per stage)."""
    return _resnet(56, num_classes, in_channels, **kwargs)


@register_model
def resnet110(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110 (18 BasicBlocks per stage)."""
    return _resnet(110, num_classes, in_channels, **kwargs)
