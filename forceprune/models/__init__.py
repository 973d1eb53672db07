"""forceprune.models: small vision models for structured-pruning experiments.

>>> from forceprune.models import create_model, list_models, output_layers
>>> model = create_model("lenet5", num_classes=10, in_channels=1)
>>> ignored = output_layers(model)          # [model.classifier]

Registered: lenet5, lenet5_relu (MNIST, 1x28x28); resnet20/32/56/110, vgg11_bn/vgg16_bn/vgg19_bn,
mobilenetv2 (CIFAR, 3x32x32).  Every model is a plain ``nn.Module`` whose final
``nn.Linear`` is ``model.classifier``.  New models: decorate a factory
``fn(num_classes=..., in_channels=..., **kw) -> nn.Module`` with :func:`register_model`.
"""
from .registry import (
    ModelInfo,
    UnknownModelError,
    create_model,
    get_model_info,
    is_model,
    list_models,
    register_model,
)
from .helpers import CLASSIFIER_ATTR, init_weights, output_layers

# importing the family modules registers their models
from . import lenet, resnet_cifar, vgg_cifar, mobilenetv2_cifar  # noqa: E402,F401
from .lenet import LeNet5
from .resnet_cifar import BasicBlock, CifarResNet
from .vgg_cifar import CifarVGG
from .mobilenetv2_cifar import InvertedResidual, MobileNetV2

__all__ = [
    "ModelInfo",
    "UnknownModelError",
    "create_model",
    "get_model_info",
    "is_model",
    "list_models",
    "register_model",
    "output_layers",
    "init_weights",
    "CLASSIFIER_ATTR",
    "LeNet5",
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "InvertedResidual",
    "MobileNetV2",
]
