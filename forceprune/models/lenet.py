"""LeNet-5 as in Caffe's ``examples/mnist/lenet_train_test.prototxt`` (20-50-500).

The network used by the structured-pruning literature (SSL, Wen et al. 2016; etc.)::

    conv1 5x5, 20   (no padding)   28 -> 24
    maxpool 2x2                    24 -> 12
    conv2 5x5, 50   (no padding)   12 -> 8
    maxpool 2x2                     8 -> 4
    flatten                        50*4*4 = 800
    fc1 800 -> 500, ReLU
    classifier 500 -> num_classes

``lenet5`` keeps Caffe's exact structure: **no activation after the convolutions**
(only after ip1).  ``lenet5_relu`` is the same network with a ReLU after each conv
(the common PyTorch re-implementation).  For 1x28x28 input and 10 classes both have
431,080 parameters and 2,293,000 multiply-accumulates (weights only).

Final classifier: ``model.classifier`` (``nn.Linear(500, num_classes)``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .helpers import init_weights
from .registry import register_model

__all__ = ["LeNet5", "lenet5", "lenet5_relu"]


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 conv_relu: bool = False):
        super().__init__()
        s = ((input_size - 4) // 2 - 4) // 2
        if s < 1:
            raise ValueError(f"LeNet5 needs input_size >= 16, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.act1 = nn.ReLU(inplace=True) if conv_relu else nn.Identity()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.act2 = nn.ReLU(inplace=True) if conv_relu else nn.Identity()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(50 * s * s, 500)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(500, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.classifier(x)


@register_model(input_size=(1, 28, 28))
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs) -> LeNet5:
    """Caffe LeNet-5 (20-50-500), no activation after convs (exact Caffe structure)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                  conv_relu=False, **kwargs)


@register_model(input_size=(1, 28, 28))
def lenet5_relu(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs) -> LeNet5:
    """LeNet-5 (20-50-500) with a ReLU after each conv (common PyTorch variant)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                  conv_relu=True, **kwargs)
