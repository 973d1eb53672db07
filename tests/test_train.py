"""Training loop, schedules, checkpoints and resume determinism on a tiny synthetic task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import forceprune as fp
from forceprune import checkpoint
from forceprune.config import RunConfig
from forceprune.data import BatchLoader, ImageTensorDataset
from forceprune.data.augment import Augmentation
from forceprune.train import Phase, Trainer, build_optimizer, evaluate, lr_factor, seed_everything


def tiny_config(**kw) -> RunConfig:
    base = dict(model="tiny", dataset="synthetic", force="etp", epochs=2, batch_size=16, lr=0.05,
                warmup_epochs=1, force_options={"beta": 0.5})
    base.update(kw)
    return RunConfig(**base)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(6 * 6 * 6, 3))


def tiny_dataset(n: int = 96) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = (x.float().mean(dim=(1, 2, 3)) > 127.5).long() + (x[:, 0, 0, 0] > 200).long()
    return ImageTensorDataset(x, y, (0.5,), (0.25,), Augmentation(pad=1, flip=True))


def tiny_loaders(train=None):
    train = train or tiny_dataset()
    return (BatchLoader(train, 16, shuffle=True, augment=True, seed=0),
            BatchLoader(tiny_dataset(32), 32))


class InterruptAfter(ImageTensorDataset):
    """The tiny dataset, raising KeyboardInterrupt (as Ctrl-C would) at the n-th batch fetched."""

    def __init__(self, n: int):
        base = tiny_dataset()
        super().__init__(base.images, base.labels, base.mean, base.std, base.augmentation)
        self.left = n

    def batch(self, index, augment=False, generator=None):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return super().batch(index, augment, generator)


def new_trainer(config: RunConfig, path, with_pruner: bool, train_set=None) -> Trainer:
    seed_everything(config.seed)
    model = tiny_model()
    pruner = fp.ForcePruner(model, torch.randn(1, 1, 8, 8), force=config.force, **config.force_options) \
        if with_pruner else None
    train, test = tiny_loaders(train_set)
    return Trainer(model, Phase.from_config(config, "force"), config, train, test, device=torch.device("cpu"),
                   pruner=pruner, checkpoint_path=path, progress=False)


@pytest.mark.parametrize("with_pruner", [False, True])
def test_resume_equals_uninterrupted(tmp_path, with_pruner):
    config = tiny_config()
    straight = new_trainer(config, tmp_path / "a.pt", with_pruner)
    straight.fit()
    if with_pruner:  # the force is strong enough that the pruner's state matters
        assert 0 < straight.history[-1]["units_zero"] < straight.history[-1]["units_total"]

    interrupted = new_trainer(config, tmp_path / "b.pt", with_pruner, train_set=InterruptAfter(6 + 3))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the middle of epoch 2
        interrupted.fit()
    torch.manual_seed(999)  # disturb the global RNG: resuming must restore it

    resumed = new_trainer(config, tmp_path / "b.pt", with_pruner)
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["test_acc"] for h in straight.history] == [h["test_acc"] for h in resumed.history]


def test_checkpoint_loads_weights_only(tmp_path):
    trainer = new_trainer(tiny_config(epochs=1, warmup_epochs=0), tmp_path / "c.pt", with_pruner=False)
    trainer.fit()
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["epoch"] == 1 and state["phase"] == "force" and len(state["history"]) == 1
    assert 0.0 <= state["history"][0]["test_acc"] <= 100.0


def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, handle):
        handle.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = checkpoint.load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_rng_state_roundtrip():
    import random

    import numpy as np

    state = checkpoint.rng_state()
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]


def test_no_weight_decay_on_bias_and_norm():
    optimizer = build_optimizer(tiny_model(), tiny_config(weight_decay=1e-3), lr=0.1)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-3 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])


def test_lr_schedules():
    cosine = Phase("force", 10, 0.1, 2, ())
    assert lr_factor(0, 10, cosine, "cosine", 0.1) == pytest.approx(1 / 20)
    assert lr_factor(20, 10, cosine, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, cosine, "cosine", 0.1) == pytest.approx(0.0)
    step = Phase("force", 10, 0.1, 0, (0.5, 0.8))
    assert [lr_factor(e * 10, 10, step, "step", 0.1) for e in (4, 5, 8)] == pytest.approx([1, 0.1, 0.01])
    assert lr_factor(55, 10, step, "constant", 0.1) == 1.0


def test_finetune_phase_uses_lower_lr_without_warmup():
    phase = Phase.from_config(tiny_config(finetune_epochs=3), "finetune")
    assert phase.epochs == 3 and phase.warmup_epochs == 0 and phase.lr == pytest.approx(0.005)


def test_evaluate_returns_percent():
    _, test = tiny_loaders()
    acc = evaluate(tiny_model(), test)
    assert 0.0 <= acc <= 100.0
