"""ForcePruneCallback: penalty, capture and removal inside Lightning's Trainer.fit (CPU)."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

import forceprune as fp  # noqa: E402
from forceprune.integrations.lightning import ForcePruneCallback  # noqa: E402

import zoo  # noqa: E402

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*litlogger.*")


class TinyModule(pl.LightningModule):
    def __init__(self, optimizer="sgd"):
        super().__init__()
        torch.manual_seed(0)
        self.net = zoo.MLP()
        self.example_input_array = torch.randn(1, 10)
        self.optimizer = optimizer

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.1)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _trainer(tmp_path, callbacks, max_epochs=2, **kw):
    return pl.Trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
        default_root_dir=str(tmp_path), **kw,
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_removal_after_epoch_0_then_training_continues(tmp_path, optimizer):
    module = TinyModule(optimizer)
    cb = ForcePruneCallback(beta=0.1 if optimizer == "sgd" else 1.0, remove_at=0)
    trainer = _trainer(tmp_path, [cb])
    trainer.fit(module, _loader())
    assert len(cb.reports) == 1 and cb.removed
    report = cb.reports[0]
    assert report.params_after < report.params_before
    assert report.max_output_error < 1e-5
    assert report.params_after == sum(p.numel() for p in module.parameters())
    assert trainer.global_step == 8  # epoch 1 trained the pruned model
    opt = trainer.optimizers[0]
    params = {id(p) for p in module.parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == params
    for p, state in opt.state.items():
        for v in state.values():
            if torch.is_tensor(v) and v.dim():
                assert v.shape == p.shape


def test_fit_end_removal_and_resume_from_a_pruned_checkpoint(tmp_path):
    module = TinyModule()
    cb = ForcePruneCallback(beta=0.1, remove_at="fit_end")
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(module, _loader())
    assert cb.removed and cb.reports[0].params_after < cb.reports[0].params_before
    ckpt = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = {k: v.clone() for k, v in module.state_dict().items()}

    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    module2, cb2 = TinyModule(), ForcePruneCallback(beta=0.1, remove_at="fit_end")
    assert module2.net.fc1.weight.shape[0] == 16
    trainer2 = _trainer(tmp_path, [cb2, Probe()], max_epochs=2)
    trainer2.fit(module2, _loader(), ckpt_path=str(ckpt))
    assert cb2.removed and cb2.rounds == cb.rounds
    assert seen.keys() == saved.keys()
    assert all(torch.equal(seen[k], saved[k]) for k in saved)  # pruned shapes, then the saved weights
    assert trainer2.global_step == 8
    assert "on_load_checkpoint" not in module2.__dict__  # the resume hook is gone after restore


def test_resume_replays_the_rounds_on_a_submodule_with_ignored_layers(tmp_path):
    options = dict(beta=0.1, remove_at="fit_end", module="net", ignored_layers=["fc1"])
    module, cb = TinyModule(), ForcePruneCallback(**options)
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(module, _loader())
    assert cb.removed and module.net.fc1.out_features == 16  # ignored: never pruned
    assert [e["name"] for e in cb.rounds[0]["unit_sets"]] == ["fc2"]
    assert module.net.fc2.out_features < 12
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    module2, cb2 = TinyModule(), ForcePruneCallback(**options)
    _trainer(tmp_path, [cb2], max_epochs=2).fit(module2, _loader(), ckpt_path=str(tmp_path / "pruned.ckpt"))
    assert cb2.rounds == cb.rounds
    assert {k: v.shape for k, v in module2.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}


def test_penalty_gradient_equals_gradient_of_loss_plus_penalty():
    model, x = zoo.build("mlp")
    model.train()
    cb = ForcePruneCallback(beta=0.3)
    cb.pruner = fp.ForcePruner(model, x[:1], beta=0.3)
    (model(x).pow(2).mean() + cb.pruner.penalty()).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    cb.penalty_gradient()
    for w, p in zip(want, model.parameters()):
        torch.testing.assert_close(p.grad, w, rtol=1e-6, atol=1e-7)


def test_bad_options_are_named():
    with pytest.raises(fp.ForcePruneError, match="remove_at"):
        ForcePruneCallback(remove_at="epoch_end")
    module = TinyModule()
    module.example_input_array = None
    cb = ForcePruneCallback(beta=0.1)
    with pytest.raises(fp.ForcePruneError, match="example_input"):
        _trainer("/tmp", [cb], max_epochs=1).fit(module, _loader())


_DDP_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys, warnings
    sys.path.insert(0, {tests!r})
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from forceprune.integrations.lightning import ForcePruneCallback
    from test_lightning import TinyModule, _loader

    out = sys.argv[1]
    module = TinyModule()
    cb = ForcePruneCallback(beta=0.1, remove_at=0)
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         devices=2, strategy="ddp", default_root_dir=out)
    trainer.fit(module, _loader())
    h = hashlib.sha256()
    for k, v in sorted(module.named_parameters()):
        h.update(k.encode()); h.update(v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    with open(os.path.join(out, f"rank{{trainer.global_rank}}.json"), "w") as f:
        json.dump({{"kept": cb.reports[0].kept, "digest": h.hexdigest(), "steps": trainer.global_step,
                   "params_after": cb.reports[0].params_after, "params_before": cb.reports[0].params_before}}, f)
    """
)


def test_ddp_two_processes_prune_identically(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(_DDP_SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["kept"] == r1["kept"]
    assert r0["digest"] == r1["digest"]  # identical weights after removal and DDP fine-tuning
    assert r0["params_after"] < r0["params_before"]
    assert r0["steps"] == r1["steps"] == 4  # 64 samples / 2 ranks / batch 16, 2 epochs


def test_distillation_pulls_the_pruned_module_toward_its_teacher(tmp_path):
    """With alpha=1 and a loss of 0 * task, only the KL and the penalty move the weights: the
    student's logits end far closer to the teacher's than they started."""
    class KLOnly(TinyModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return 0.0 * F.cross_entropy(self(x), y)

    torch.manual_seed(1)
    teacher = zoo.MLP()
    module = KLOnly()
    x = _loader().dataset.tensors[0]
    from forceprune.distill import kl_loss

    before = kl_loss(module(x), teacher(x), 2.0).item()
    cb = ForcePruneCallback(beta=1e-4, teacher=teacher, distill={"temperature": 2.0, "alpha": 1.0}, remove_at=0)
    _trainer(tmp_path, [cb], max_epochs=6).fit(module, _loader())
    after = kl_loss(module(x), teacher(x), 2.0).item()
    assert cb.removed and cb.last_distill is not None and after < 0.3 * before


def test_teacher_and_distill_go_together():
    with pytest.raises(fp.ForcePruneError, match="teacher= and distill= go together"):
        ForcePruneCallback(distill={"alpha": 0.5})
    with pytest.raises(fp.ForcePruneError, match="temperature must be a number > 0"):
        ForcePruneCallback(teacher=zoo.MLP(), distill={"temperature": 0})
