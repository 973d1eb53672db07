"""The one training loop, schedules, checkpoints and resume determinism on a tiny synthetic task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import forceprune as fp
from forceprune import checkpoint
from forceprune.data import BatchLoader, ImageTensorDataset
from forceprune.data.augment import Augmentation
from forceprune.runs import Phase, Trainer, VisionConfig, evaluate
from forceprune.runs.loop import build_optimizer, lr_factor, seed_everything
from forceprune.runs.vision import vision_phase

BETA = 0.5


def tiny_phase(**kw) -> Phase:
    return Phase(**{"name": "force", "epochs": 2, "lr": 0.05, "warmup_epochs": 1, **kw})


def classify(model, batch):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), logits, y


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


def new_trainer(phase: Phase, path, with_pruner: bool, train_set=None, force_mode: str = "loss") -> Trainer:
    seed_everything(0)
    model = tiny_model()
    pruner = fp.ForcePruner(model, torch.randn(1, 1, 8, 8), force="etp", beta=BETA) if with_pruner else None
    train, test = tiny_loaders(train_set)
    return Trainer(model, phase, train, test, classify, device=torch.device("cpu"), method=pruner,
                   force_mode=force_mode, checkpoint_path=path, progress=False)


@pytest.mark.parametrize("with_pruner", [False, True])
def test_resume_equals_uninterrupted(tmp_path, with_pruner):
    phase = tiny_phase()
    straight = new_trainer(phase, tmp_path / "a.pt", with_pruner)
    straight.fit()
    if with_pruner:  # the force is strong enough that the pruner's state matters
        assert 0 < straight.history[-1]["units_zero"] < straight.history[-1]["units_total"]

    interrupted = new_trainer(phase, tmp_path / "b.pt", with_pruner, train_set=InterruptAfter(6 + 3))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the middle of epoch 2
        interrupted.fit()
    torch.manual_seed(999)  # disturb the global RNG: resuming must restore it

    resumed = new_trainer(phase, tmp_path / "b.pt", with_pruner)
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["eval_acc"] for h in straight.history] == [h["eval_acc"] for h in resumed.history]


def test_checkpoint_loads_weights_only(tmp_path):
    trainer = new_trainer(tiny_phase(epochs=1, warmup_epochs=0), tmp_path / "c.pt", with_pruner=False)
    trainer.fit()
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["epoch"] == 1 and state["phase"] == "force" and len(state["history"]) == 1
    assert state["step"] == 6 and 0.0 <= state["history"][0]["eval_acc"] <= 100.0


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
    optimizer = build_optimizer(tiny_model(), tiny_phase(weight_decay=1e-3))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-3 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])


def test_lr_schedules():
    cosine = Phase("force", 10, 0.1, warmup_epochs=2)
    assert lr_factor(0, 10, cosine) == pytest.approx(1 / 20)
    assert lr_factor(20, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(100, 10, cosine) == pytest.approx(0.0)
    step = Phase("force", 10, 0.1, schedule="step", milestones=(0.5, 0.8))
    assert [lr_factor(e * 10, 10, step) for e in (4, 5, 8)] == pytest.approx([1, 0.1, 0.01])
    assert lr_factor(55, 10, Phase("force", 10, 0.1, schedule="constant")) == 1.0
    linear = Phase("force", 1, 0.1, schedule="linear", warmup_ratio=0.2)  # 10 steps, 2 of warm-up
    assert [lr_factor(s, 10, linear) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])


def test_fractional_epochs_stop_at_the_phase_s_last_step(tmp_path):
    trainer = new_trainer(tiny_phase(epochs=1.5, warmup_epochs=0), None, with_pruner=False)
    history = trainer.fit()
    assert trainer.step == 9 and [r["steps"] for r in history] == [6, 9] and trainer.epochs == 2
    capped = new_trainer(tiny_phase(epochs=3, max_steps=4, warmup_epochs=0), None, with_pruner=False)
    assert [r["steps"] for r in capped.fit()] == [4]


def test_proximal_force_mode_zeroes_units_without_a_penalty_in_the_loss():
    trainer = new_trainer(tiny_phase(epochs=2, warmup_epochs=0), None, with_pruner=True, force_mode="prox")
    history = trainer.fit()
    assert all(r["penalty"] == 0.0 for r in history), "prox mode: the force is not a loss term"
    assert history[-1]["units_zero"] > 0


def test_finetune_phase_uses_lower_lr_without_warmup():
    config = VisionConfig(model="lenet5", dataset="mnist", force="etp", epochs=2, warmup_epochs=1, lr=0.05,
                          finetune_epochs=3)
    phase = vision_phase(config, "finetune")
    assert phase.epochs == 3 and phase.warmup_epochs == 0 and phase.lr == pytest.approx(0.005)


def test_evaluate_returns_percent():
    """A model that always answers class 0, on labels [0, 0, 0, 1] and [0, 1, 1, 1]: 4 of 8 right."""
    always_zero = nn.Linear(2, 3)
    with torch.no_grad():
        always_zero.weight.zero_()
        always_zero.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    batches = [(torch.randn(4, 2), torch.tensor([0, 0, 0, 1])), (torch.randn(4, 2), torch.tensor([0, 1, 1, 1]))]
    result = evaluate(always_zero, batches, classify)
    assert result.accuracy == pytest.approx(50.0) and result.count == 8
    assert result.loss == pytest.approx(F.cross_entropy(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0])).item() * 4 / 8
                                         + F.cross_entropy(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1])).item() * 4 / 8)


def test_epoch_e_trains_on_the_loader_s_stream_of_epoch_e():
    """The training loop iterates its batches once per epoch: epoch e sees exactly the (seed, e)
    stream that BatchLoader documents (a progress-bar wrapper once consumed a stream ahead)."""
    trainer = new_trainer(tiny_phase(epochs=2, warmup_epochs=0), None, with_pruner=False)
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()) if m.training else None)
    trainer.fit()
    reference = tiny_loaders()[0]
    for epoch, first in ((0, seen[0]), (1, seen[6])):
        reference.set_epoch(epoch)
        assert torch.equal(first, next(iter(reference))[0])
