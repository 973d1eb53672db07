"""CIFAR VGG with batch norm (network-slimming / Torch-Pruning CIFAR variant).

``features``: conv3x3(pad 1, no bias)-BN-ReLU blocks and 2x2 max-pools following the
configurations below; then global average pooling (1x1 already for 32x32 input),
flatten and a single ``classifier = nn.Linear(512, num_classes)``.

Final classifier: ``model.classifier``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch
import torch.nn as nn

from .helpers import init_weights
from .registry import register_model

__all__ = ["VGG_CFGS", "CifarVGG", "vgg11_bn", "vgg16_bn", "vgg19_bn"]

VGG_CFGS: Dict[str, List[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    def __init__(self, cfg: Sequence[Union[int, str]], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: List[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                v = int(v)
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register_model
def vgg11_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarVGG:
    """CIFAR VGG-11 with BN (8 conv layers + Linear(512, num_classes))."""
    return CifarVGG(VGG_CFGS["vgg11"], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarVGG:
    """CIFAR VGG-16 with BN (13 conv layers + Linear(512, num_classes))."""
    return CifarVGG(VGG_CFGS["vgg16"], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg19_bn(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarVGG:
    """CIFAR VGG-19 with BN (16 conv layers + Linear(512, num_classes))."""
    return CifarVGG(VGG_CFGS["vgg19"], num_classes=num_classes, in_channels=in_channels, **kwargs)
