"""forceprune inside transformers.Trainer, and save/reload of pruned HF models."""
import json
import warnings

import pytest
import torch

import forceprune as fp
from forceprune import attention as A
from forceprune.errors import ForcePruneError

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from forceprune.integrations.transformers import (  # noqa: E402
    ForcePruneCallback,
    ForcePruneLossMixin,
    load_pruned_pretrained,
    record_pruning,
    save_pruned_pretrained,
)



def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, num_labels=2,
    )
    return BertForSequenceClassification(cfg)


class TinyText(torch.utils.data.Dataset):
    def __init__(self, n=24, length=10):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 100, (n, length), generator=g)
        self.y = (self.ids[:, 1] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.y[i]}


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8, learning_rate=5e-3,
        logging_steps=2, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def test_trainer_callback_adds_penalty_captures_and_removes(tmp_path):
    model = tiny_bert()
    cb = ForcePruneCallback(force="etp", beta=0.05, pivot="ranked", verbose=False)  # the three added lines:
    args = _args(tmp_path, max_steps=8, learning_rate=2e-2, lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=TinyText(), callbacks=[cb])  # callbacks=
    trainer.train()
    assert cb._added == 8  # one penalty per training forward
    logs = [h for h in trainer.state.log_history if "forceprune_penalty" in h]
    assert logs and all(h["forceprune_penalty"] > 0 for h in logs)
    assert "forward" not in model.__dict__  # the wrapper is gone after training
    assert cb.report is not None and cb.report.macs_after < cb.report.macs_before
    assert (tmp_path / "out" / "forceprune_report.json").is_file()
    # the pruned model still runs (and is smaller)
    x = TinyText()[0]
    model.eval()
    with torch.no_grad():
        model(input_ids=x["input_ids"][None])
    assert sum(A.heads_per_layer(model).values()) + sum(A.ffn_per_layer(model).values()) < 2 * 4 + 2 * 37


def test_trainer_callback_takes_a_macs_budget_over_the_trainers_steps(tmp_path):
    model = tiny_bert()
    cb = ForcePruneCallback(force="etp", beta=0.05, pivot="ranked", target_macs=0.6, budget={"every": 2}, verbose=False)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=8, learning_rate=2e-2, lr_scheduler_type="constant"),
                      train_dataset=TinyText(), callbacks=[cb])
    trainer.train()
    assert cb.pruner.controller is not None and cb.pruner.controller.budget.total_steps == 8
    assert cb.pruner.controller.updates >= 3
    assert cb.report.macs_after <= 0.6 * 1.03 * cb.report.macs_before, "the budget holds after removal"


def test_penalty_enters_the_loss_the_trainer_backpropagates(tmp_path):
    """The gradient the Trainer hands to the optimizer is the task gradient plus the penalty's."""
    def no_dropout_bert():
        model = tiny_bert()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        return model

    model = no_dropout_bert()
    cb = ForcePruneCallback(force="group_lasso", beta=1.0, prune_at_end=False, verbose=False)
    grads = []

    class Spy(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            grads.append(model.bert.encoder.layer[0].attention.self.query.weight.grad.clone())

    data = TinyText()
    args = _args(tmp_path, max_steps=1, learning_rate=0.0, max_grad_norm=0.0, per_device_train_batch_size=len(data))
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb, Spy()]).train()
    # the same (whole-dataset) batch, task loss alone, and the penalty alone
    ref = no_dropout_bert().train()
    ref(input_ids=data.ids, attention_mask=torch.ones_like(data.ids), labels=data.y).loss.backward()
    task_grad = ref.bert.encoder.layer[0].attention.self.query.weight.grad
    pen_model = no_dropout_bert()
    fp.ForcePruner(pen_model, {"input_ids": data.ids[:1]}, "group_lasso", beta=1.0).penalty().backward()
    pen_grad = pen_model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert pen_grad.abs().max() > 10 * (grads[0] - task_grad - pen_grad).abs().max()
    assert torch.allclose(grads[0], task_grad + pen_grad, atol=1e-5)


def test_label_smoothing_needs_the_mixin(tmp_path):
    model = tiny_bert()
    cb = ForcePruneCallback(beta=1.0, verbose=False)
    trainer = Trainer(model=model, args=_args(tmp_path, label_smoothing_factor=0.1), train_dataset=TinyText(), callbacks=[cb])
    with pytest.raises(ForcePruneError, match="ForcePruneLossMixin"):
        trainer.train()
    assert "forward" not in model.__dict__

    class MyTrainer(ForcePruneLossMixin, Trainer):
        pass

    model = tiny_bert()
    cb = ForcePruneCallback(beta=1.0, verbose=False)
    MyTrainer(model=model, args=_args(tmp_path, label_smoothing_factor=0.1, max_steps=2), train_dataset=TinyText(),
              callbacks=[cb]).train()
    assert cb._added == 2 and cb.report is not None


def _pruned_bert():
    model = tiny_bert().eval()
    ex = {"input_ids": TinyText()[0]["input_ids"][None]}
    pruner = fp.ForcePruner(model, ex)
    sets = {us.name: us for us in pruner.unit_sets}
    for name, units in (("bert.encoder.layer.0.attention", [0, 3]), ("bert.encoder.layer.1.attention", [1]),
                        ("bert.encoder.layer.0.intermediate.dense", list(range(20, 37)))):
        mask = torch.zeros(sets[name].size, dtype=torch.bool)
        mask[units] = True
        sets[name].zero_(mask, "all")
    pruner.prune()
    return model, pruner


def test_save_and_reload_pruned_model_gives_identical_outputs(tmp_path):
    model, pruner = _pruned_bert()
    assert list(A.heads_per_layer(model).values()) == [2, 3]
    save_pruned_pretrained(model, tmp_path / "m", pruner.history)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["forceprune"]["kept_heads"] == {"encoder.layer.0.attention": [1, 2], "encoder.layer.1.attention": [0, 2, 3]}
    assert cfg["forceprune"]["intermediate_size"] == {"encoder.layer.0": 20}
    reloaded = load_pruned_pretrained(tmp_path / "m")
    assert type(reloaded) is BertForSequenceClassification
    assert A.heads_per_layer(reloaded) == A.heads_per_layer(model)
    assert A.ffn_per_layer(reloaded) == A.ffn_per_layer(model)
    ids = TinyText().ids[:4]
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(a, b)
    # an Auto class works too, and the reloaded model can be pruned further
    auto = load_pruned_pretrained(tmp_path / "m", model_class=transformers.AutoModelForSequenceClassification)
    assert A.heads_per_layer(auto) == A.heads_per_layer(model)
    p = fp.ForcePruner(auto, {"input_ids": ids[:1]})
    assert {us.name: us.size for us in p.unit_sets}["bert.encoder.layer.1.attention"] == 3


def test_from_pretrained_cannot_and_load_pruned_pretrained_can(tmp_path):
    model, pruner = _pruned_bert()
    save_pruned_pretrained(model, tmp_path / "m", pruner.history)
    with pytest.raises(Exception):
        BertForSequenceClassification.from_pretrained(str(tmp_path / "m"))
    load_pruned_pretrained(tmp_path / "m")


def test_heads_kept_over_two_prune_rounds_compose_in_the_saved_record(tmp_path):
    model, pruner = _pruned_bert()  # round 1: layer 0 keeps heads [1, 2], layer 1 keeps [0, 2, 3]
    save_pruned_pretrained(model, tmp_path / "one", pruner.history)
    sets = {us.name: us for us in pruner.unit_sets}
    for name, units in (("bert.encoder.layer.0.attention", [0]), ("bert.encoder.layer.1.attention", [1])):
        mask = torch.zeros(sets[name].size, dtype=torch.bool)
        mask[units] = True
        sets[name].zero_(mask, "all")
    pruner.prune()  # round 2 removes current head 0 of layer 0 (base head 1), current head 1 of layer 1 (base 2)
    # the whole history again: round 1, already in the record, is not applied twice
    save_pruned_pretrained(model, tmp_path / "two", pruner.history)
    save_pruned_pretrained(model, tmp_path / "two", pruner.history)  # saving twice changes nothing
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["forceprune"]["kept_heads"] == {"encoder.layer.0.attention": [2], "encoder.layer.1.attention": [0, 3]}
    assert cfg["forceprune"]["intermediate_size"] == {"encoder.layer.0": 20}
    first = json.loads((tmp_path / "one" / "config.json").read_text())["forceprune"]["kept_heads"]
    assert first == {"encoder.layer.0.attention": [1, 2], "encoder.layer.1.attention": [0, 2, 3]}
    reloaded = load_pruned_pretrained(tmp_path / "two")
    assert A.heads_per_layer(reloaded) == {"bert.encoder.layer.0.attention": 1, "bert.encoder.layer.1.attention": 2}
    ids = TinyText().ids[:4]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_the_callback_records_what_it_removed_for_save_model(tmp_path):
    model = tiny_bert()
    cb = ForcePruneCallback(force="etp", beta=0.05, pivot="ranked", verbose=False)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=8, learning_rate=2e-2, lr_scheduler_type="constant"),
                      train_dataset=TinyText(), callbacks=[cb])
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    rec = json.loads((tmp_path / "saved" / "config.json").read_text())["forceprune"]
    heads = {n.removeprefix("bert."): h for n, h in A.heads_per_layer(model).items() if h < 4}
    ffn = {n.removeprefix("bert.").removesuffix(".intermediate.dense"): w for n, w in A.ffn_per_layer(model).items() if w < 37}
    assert heads or ffn  # the callback removed something
    assert {n: len(k) for n, k in rec.get("kept_heads", {}).items()} == heads
    assert rec.get("intermediate_size", {}) == ffn
    report = json.loads((tmp_path / "out" / "forceprune_report.json").read_text())
    assert report["kept"] == cb.report.kept
    assert record_pruning(model, cb.report) == rec  # already recorded: recording again changes nothing
    reloaded = load_pruned_pretrained(tmp_path / "saved")
    assert A.heads_per_layer(reloaded) == A.heads_per_layer(model)


def test_load_pruned_pretrained_bad_paths(tmp_path):
    with pytest.raises(ForcePruneError, match="no config.json"):
        load_pruned_pretrained(tmp_path / "missing")
    tiny_bert().config.save_pretrained(str(tmp_path / "cfg_only"))
    with pytest.raises(ForcePruneError, match="model.safetensors"):
        load_pruned_pretrained(tmp_path / "cfg_only")


def test_trainer_callback_prox_mode_zeroes_units_without_touching_the_loss(tmp_path):
    model = tiny_bert()
    cb = ForcePruneCallback(force="etp", force_mode="prox", beta=0.5, pivot="ranked", verbose=False)
    args = _args(tmp_path, max_steps=6, learning_rate=1e-2, lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=TinyText(), callbacks=[cb])
    trainer.train()
    assert cb._added == 0  # the loss is the task loss
    assert cb.report.macs_after < cb.report.macs_before
    assert cb.report.max_output_error < 1e-5


def test_trainer_callback_prox_mode_meets_a_macs_budget(tmp_path):
    """The fine-tuning recipe for pretrained models: proximal force under AdamW, scaled by the controller."""
    model = tiny_bert()
    cb = ForcePruneCallback(force="etp", force_mode="prox", beta=0.05, pivot="ranked", target_macs=0.6,
                            budget={"every": 2}, verbose=False)
    args = _args(tmp_path, max_steps=10, learning_rate=1e-2, lr_scheduler_type="constant")
    Trainer(model=model, args=args, train_dataset=TinyText(), callbacks=[cb]).train()
    assert cb.pruner.controller.reached
    assert 0.6 * 0.97 <= cb.report.macs_after / cb.report.macs_before <= 0.6 * 1.03
    assert cb.report.max_output_error < 1e-5, "met by units the proximal step zeroed: removal is lossless"
