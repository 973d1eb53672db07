"""A zoo of tiny architectures covering the coupling patterns pruning must handle.

Each entry builds a model and example inputs (batch of 4). Kept tiny so every test over the
zoo runs in well under a second per model on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PlainCNN(nn.Module):
    """conv-BN-ReLU x2 -> pool -> linear: the simplest producer/consumer chain."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    """Two residual blocks sharing one channel space (coupled by additions)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
            for _ in range(2)
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for b in self.blocks:
            x = F.relu(x + b(x))
        return self.fc(x.mean((2, 3)))


class DenseConcat(nn.Module):
    """DenseNet-style: features concatenated along channels, then a 1x1 transition."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 6, 3, padding=1)
        self.c1 = nn.Conv2d(6, 4, 3, padding=1)
        self.c2 = nn.Conv2d(10, 4, 3, padding=1)
        self.trans = nn.Conv2d(14, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x0 = F.relu(self.c0(x))
        x1 = torch.cat([x0, F.relu(self.c1(x0))], 1)
        x2 = torch.cat([x1, F.relu(self.c2(x1))], 1)
        return self.fc(F.relu(self.trans(x2)).mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2-style: expand 1x1 -> depthwise 3x3 -> project 1x1, with a residual."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.expand, self.bn1 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.project, self.bn3 = nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(h)))
        x = x + self.bn3(self.project(h))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(10, 16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block on token embeddings: attention + GELU FFN (FFN neurons prune)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.block = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        return self.head(self.block(self.embed(tokens)).mean(1))


def _image(c=3, s=8):
    return torch.randn(4, c, s, s)


ZOO = {
    "plain_cnn": (PlainCNN, lambda: _image()),
    "residual": (Residual, lambda: _image()),
    "dense_concat": (DenseConcat, lambda: _image()),
    "inverted_residual": (InvertedResidual, lambda: _image()),
    "mlp": (MLP, lambda: torch.randn(4, 10)),
    "transformer_block": (TransformerBlock, lambda: torch.randint(0, 20, (4, 7))),
}


def build(name: str, seed: int = 0):
    """``(model in eval mode with non-trivial BN statistics, example inputs)``."""
    torch.manual_seed(seed)
    cls, make_inputs = ZOO[name]
    model = cls()
    for m in model.modules():  # give BN non-trivial statistics and affine terms
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval(), make_inputs()
