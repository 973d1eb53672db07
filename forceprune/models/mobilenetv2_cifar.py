"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 CIFAR input.

Same inverted-residual stack as ImageNet MobileNetV2 (t, c, n, s) but with a stride-1
stem and stride 1 in the second stage (as in the common kuangliu/pytorch-cifar
version), so the feature map goes 32 -> 32 -> 16 -> 8 -> 4.  Each block is
1x1 expand (omitted when t = 1) -> 3x3 depthwise -> 1x1 linear projection, BN + ReLU6;
the residual add is used only when stride == 1 and input width == output width.
``width_mult`` scales all widths (rounded to multiples of 8); the last 1x1 conv keeps
1280 channels for ``width_mult <= 1``.

Final classifier: ``model.classifier`` (``nn.Linear(1280, num_classes)``), preceded by
``model.dropout`` (``nn.Dropout(dropout)``; identity for the default ``dropout=0``).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .helpers import init_weights, make_divisible
from .registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2", "CIFAR_MBV2_SETTING"]

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat)
CIFAR_MBV2_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # stride 2 in ImageNet MobileNetV2
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> List[nn.Module]:
    layers: List[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn_act(inp, hidden, 1)
        layers += _conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden)
        layers += _conv_bn_act(hidden, oup, 1, act=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.0, round_nearest: int = 8, setting=None):
        super().__init__()
        setting = CIFAR_MBV2_SETTING if setting is None else setting
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers: List[nn.Module] = [nn.Sequential(*_conv_bn_act(in_channels, input_channel, 3, stride=1))]
        for t, c, n, s in setting:
            out = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(input_channel, out, s if i == 0 else 1, t))
                input_channel = out
        layers.append(nn.Sequential(*_conv_bn_act(input_channel, self.last_channel, 1)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(self.last_channel, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.avgpool(self.features(x)))
        return self.classifier(self.dropout(x))


@register_model
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs) -> MobileNetV2:
    """MobileNetV2 for CIFAR (stride-1 stem, 32x32 input), ``width_mult`` option."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult, **kwargs)
