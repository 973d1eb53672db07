"""Distillation from the dense model: the loss against hand computation, bad teachers and
configs, and runs that distil through the pipeline."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from forceprune.distill import Distillation, distillation_loss, distilled, frozen_copy, hidden_loss, kl_loss
from forceprune.errors import ForcePruneError
from forceprune.runs import ConfigError, config_from_dict


def test_kl_is_the_hand_computed_one():
    """Two positions, two classes, T = 2: T^2 * mean_i sum_c p_t log(p_t / p_s)."""
    student = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    t = 2.0

    def softmax(z):
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    by_hand = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        ps, pt = softmax(s_row), softmax(t_row)
        by_hand += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    by_hand = t * t * by_hand / 2
    assert kl_loss(student, teacher, t).item() == pytest.approx(by_hand, rel=1e-6)
    assert kl_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def test_padding_labels_are_left_out():
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    labels = torch.tensor([1, -100, 2])
    assert kl_loss(student, teacher, 1.5, labels).item() == pytest.approx(kl_loss(student[[0, 2]], teacher[[0, 2]], 1.5).item())


def test_the_distilled_loss_mixes_task_kl_and_hidden_terms():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    task = torch.tensor(0.7)
    hs, ht = [torch.randn(4, 8), torch.randn(4, 8)], [torch.randn(4, 8), torch.randn(4, 8)]
    options = Distillation(temperature=3.0, alpha=0.25, hidden=2.0)
    expected = 0.75 * 0.7 + 0.25 * kl_loss(s, t, 3.0) + 2.0 * (F.mse_loss(hs[0], ht[0]) + F.mse_loss(hs[1], ht[1])) / 2
    got = distillation_loss(s, t, None, task, options, hs, ht)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert hidden_loss(hs, hs).item() == 0.0


def test_the_gradient_pulls_the_student_toward_the_teacher():
    student = nn.Linear(4, 3)
    teacher = frozen_copy(nn.Linear(4, 3))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randn(16, 4)

    def objective(model, batch):
        logits = model(batch)
        return F.cross_entropy(logits, torch.zeros(16, dtype=torch.long)), logits, torch.zeros(16, dtype=torch.long)

    step = distilled(objective, teacher, Distillation(temperature=1.0, alpha=1.0))
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    before = kl_loss(student(x), teacher(x), 1.0).item()
    for _ in range(50):
        opt.zero_grad()
        step(student, x)[0].backward()
        opt.step()
    assert kl_loss(student(x), teacher(x), 1.0).item() < 0.2 * before


@pytest.mark.parametrize("options, message", [
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"temperature": -1.0}, "temperature must be a number > 0"),
    ({"alpha": 1.5}, "alpha must be in [0, 1]"),
    ({"hidden": -1}, "hidden must be a number >= 0"),
])
def test_bad_options(options, message):
    with pytest.raises(ForcePruneError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Distillation(**options)


def test_a_teacher_of_another_kind_is_refused():
    with pytest.raises(ForcePruneError, match="same model before pruning"):
        kl_loss(torch.randn(2, 3), torch.randn(2, 5), 2.0)


@pytest.mark.parametrize("distill, message", [
    ({"temprature": 2.0}, "unknown distill options ['temprature']; valid: temperature, alpha, hidden"),
    ({"temperature": 0.0}, "distill temperature must be a number > 0"),
])
def test_bad_distill_sections_in_a_config(distill, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": "lenet5", "dataset": "mnist", "force": "etp", "dense_epochs": 1, "distill": distill})
    assert message in str(info.value)


def test_distillation_needs_a_dense_phase():
    with pytest.raises(ConfigError, match="distill needs a dense model: set dense_epochs > 0"):
        config_from_dict({"model": "lenet5", "dataset": "mnist", "force": "etp", "distill": {"alpha": 0.5}})
    with pytest.raises(ConfigError, match="init_from_dense needs a dense model"):
        config_from_dict({"model": "lenet5", "dataset": "mnist", "force": "etp", "init_from_dense": True})


def test_a_vision_run_distils_from_its_dense_phase(data_dir, tmp_path):
    """Dense phase, then the force phase starts from its weights and learns from it as a teacher."""
    from forceprune.runs import run

    config = config_from_dict({
        "model": "lenet5", "dataset": "mnist", "force": "etp", "force_options": {"beta": 1e-3}, "data_dir": data_dir,
        "train_subset": 1000, "test_subset": 500, "epochs": 1, "dense_epochs": 2, "finetune_epochs": 1, "batch_size": 50,
        "latency_batch_sizes": [1], "latency_repeats": 3, "init_from_dense": True, "distill": {"alpha": 0.5},
        "output_dir": str(tmp_path / "run")})
    report = run(config, progress=False)
    phases = [r["phase"] for r in report["history"]]
    assert phases == ["dense", "dense", "force", "finetune"] and report["config"]["distill"] == {"alpha": 0.5}
    assert report["acc_dense"] > 80, "the teacher learned something"
    assert report["history"][2]["train_acc"] > 80, "the force phase started from the trained dense weights"
    assert report["acc_final"] > 80
