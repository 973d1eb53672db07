"""Tests for forceprune.models (timm-style: parametrised over list_models())."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from forceprune.models import (
    UnknownModelError,
    create_model,
    get_model_info,
    list_models,
    output_layers,
    register_model,
)

ALL_MODELS = list_models()
EXPECTED = {"lenet5", "lenet5_relu", "resnet20", "resnet32", "resnet56", "resnet110",
            "vgg11_bn", "vgg16_bn", "vgg19_bn", "mobilenetv2"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _input(name: str, batch: int = 2) -> torch.Tensor:
    c, h, w = get_model_info(name).input_size
    return torch.randn(batch, c, h, w)


def _create(name: str, num_classes: int = 10) -> nn.Module:
    c = get_model_info(name).input_size[0]
    return create_model(name, num_classes=num_classes, in_channels=c)


def test_registry_contents():
    assert EXPECTED <= set(ALL_MODELS)
    assert ALL_MODELS == sorted(ALL_MODELS)
    assert list_models("resnet*") == ["resnet110", "resnet20", "resnet32", "resnet56"]
    assert list_models("VGG*_BN") == ["vgg11_bn", "vgg16_bn", "vgg19_bn"]
    assert list_models(["lenet*", "mobile*"]) == ["lenet5", "lenet5_relu", "mobilenetv2"]
    assert list_models("nothing*") == []


def test_unknown_model_error():
    with pytest.raises(UnknownModelError) as ei:
        create_model("resnet21")
    err = ei.value
    assert isinstance(err, KeyError)
    msg = str(err)
    assert "resnet21" in msg
    assert "Did you mean 'resnet20'?" in msg
    for name in ALL_MODELS:
        assert name in msg
    with pytest.raises(KeyError):
        create_model("definitely_not_a_model")
    assert "Did you mean 'vgg16_bn'?" in str(pytest.raises(UnknownModelError, create_model, "vgg16").value)
    assert "Did you mean 'mobilenetv2'?" in str(pytest.raises(UnknownModelError, create_model, "MobileNet-V2").value)
    assert create_model("ResNet20").classifier.in_features == 64  # case-insensitive


def test_register_model_decorator():
    from forceprune.models import registry

    @register_model(input_size=(1, 8, 8))
    def _tiny_test_model(num_classes=10, in_channels=3, hidden=4):
        """Tiny test model."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))

    try:
        assert "_tiny_test_model" in list_models()
        info = get_model_info("_tiny_test_model")
        assert info.input_size == (1, 8, 8) and info.description == "Tiny test model."
        m = create_model("_tiny_test_model", num_classes=3, in_channels=2, hidden=5)
        assert m(torch.randn(2, 2, 8, 8)).shape == (2, 3)
        assert output_layers(m) == [m[3]]  # fallback: last Linear

        def other(num_classes=10, in_channels=3):
            return nn.Identity()
        other.__name__ = other.__qualname__ = "resnet20_clash"
        register_model(other)
        with pytest.raises(ValueError):
            register_model(lambda num_classes=10, in_channels=3: nn.Identity(), name="resnet20_clash")
    finally:
        registry._REGISTRY.pop("_tiny_test_model", None)
        registry._REGISTRY.pop("resnet20_clash", None)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape_and_classifier(name):
    model = _create(name, num_classes=7).eval()
    with torch.no_grad():
        y = model(_input(name))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    outs = output_layers(model)
    assert outs == [model.classifier]
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7


@pytest.mark.parametrize("name", ALL_MODELS)
def test_in_channels_honoured(name):
    _, h, w = get_model_info(name).input_size
    model = create_model(name, num_classes=4, in_channels=2).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 2
    with torch.no_grad():
        assert model(torch.randn(1, 2, h, w)).shape == (1, 4)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_backward(name):
    model = _create(name).train()
    y = model(_input(name))
    loss = nn.functional.cross_entropy(y, torch.tensor([0, 1]))
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
    assert model.classifier.weight.grad.abs().sum() > 0


def test_init():
    model = create_model("resnet20")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.layer3[0].conv1  # 32->64, 3x3: kaiming fan_out std = sqrt(2 / (64*9)) ~= 0.0589
    assert abs(conv.weight.std().item() - (2.0 / (64 * 9)) ** 0.5) < 0.006
    z = create_model("resnet20", zero_init_residual=True)
    assert torch.all(z.layer1[0].bn2.weight == 0)


def test_lenet5_structure_and_counts():
    model = create_model("lenet5", num_classes=10, in_channels=1)
    # Caffe structure: no activation after the convolutions.
    assert not any(isinstance(m, nn.ReLU) for m in (model.act1, model.act2))
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1
    assert sum(isinstance(m, nn.ReLU) for m in create_model("lenet5_relu", in_channels=1).modules()) == 3
    # Parameters by hand:
    #   conv1: 20*1*5*5 + 20      =     520
    #   conv2: 50*20*5*5 + 50     =  25,050
    #   fc1:   800*500 + 500      = 400,500
    #   fc2:   500*10 + 10        =   5,010
    #   total                     = 431,080
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 520 + 25_050 + 400_500 + 5_010 == 431_080
    # MACs by hand (multiply-accumulates of weights only):
    #   conv1: 20*25*24*24  =   288,000
    #   conv2: 50*20*25*8*8 = 1,600,000
    #   fc1:   800*500      =   400,000
    #   fc2:   500*10       =     5,000
    #   total               = 2,293,000  (the "2.29 M" of the pruning papers)
    pure = 20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10
    assert pure == 2_293_000
    # tp.utils.count_ops_and_params (ptflops convention) also counts biases (one op per
    # output element), max-pools (one per input element) and ReLU (one per element):
    #   conv1 bias 20*24*24 = 11,520; pool1 20*24*24 = 11,520; conv2 bias 50*8*8 = 3,200;
    #   pool2 50*8*8 = 3,200; fc1 bias 500; ReLU 500; fc2 bias 10   -> +30,450
    counter = pure + 11_520 + 11_520 + 3_200 + 3_200 + 500 + 500 + 10
    assert counter == 2_323_450
    macs, params = tp.utils.count_ops_and_params(model.eval(), torch.randn(1, 1, 28, 28))
    assert params == 431_080
    assert macs == counter


def test_resnet20_counts():
    model = create_model("resnet20").eval()
    # Parameters by hand (convs bias-free, BN = 2*C):
    #   stem   conv 3*16*9 + BN 32                                  =     464
    #   stage1 3 blocks * 2 * (16*16*9 + 32)                         =  14,016
    #   stage2 (16*32*9+64) + (32*32*9+64) + 4*(32*32*9+64)          =  51,072
    #   stage3 (32*64*9+128) + (64*64*9+128) + 4*(64*64*9+128)       = 203,520
    #   fc     64*10 + 10                                           =     650
    #   -> 269,722 (the usual "0.27 M" option-A ResNet-20)
    #   + projections 16*32 + 64 and 32*64 + 128                    =   2,752
    #   total                                                       = 272,474
    option_a = 464 + 14_016 + 51_072 + 203_520 + 650
    assert option_a == 269_722
    assert sum(p.numel() for p in model.parameters()) == option_a + 576 + 2_176 == 272_474
    # Conv/linear MACs: 3 stages of 32x32, 16x16, 8x8 maps
    pure = (3 * 16 * 9 * 1024                                    # stem
            + 6 * 16 * 16 * 9 * 1024                             # stage1
            + (16 * 32 * 9 + 5 * 32 * 32 * 9 + 16 * 32) * 256   # stage2 (+ projection)
            + (32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64) * 64    # stage3 (+ projection)
            + 64 * 10)
    assert pure == 40_813_184
    macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 32, 32))
    assert 41.0e6 < macs < 41.8e6  # counter adds BN/ReLU/pool/bias ops on top of `pure`


def test_mobilenetv2_width_mult():
    m = create_model("mobilenetv2", width_mult=0.5).eval()
    assert m.features[0][0].out_channels == 16 and m.last_channel == 1280
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert sum(p.numel() for p in create_model("mobilenetv2").parameters()) == 2_236_682


@pytest.mark.parametrize("name", ALL_MODELS)
def test_prunable_with_torch_pruning(name):
    model = _create(name).eval()
    x = _input(name, batch=1)
    ignored = output_layers(model)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
    assert len(groups) > 0
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=ignored)
    pruner.step()
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    assert params1 < 0.5 * params0 and macs1 < 0.5 * macs0
    with torch.no_grad():
        y = model(_input(name))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert model.classifier.out_features == 10
