"""Nothing lost, no tracebacks: every bad input and fault ends in a ForcePruneError that names the
fix, and no file that existed before is changed.

One table per class of trouble (config, data, run directory, files, operating-system faults,
consistency, API). Each case sets up its trouble in a copy of a finished tiny run, triggers it
through the public API, and asserts the error type, that the message names the fix, and that
every file that existed before is byte-identical afterwards.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import forceprune as fp
from forceprune import checkpoint
from forceprune.cli import main
from forceprune.data import ChecksumError, DatasetNotFoundError
from forceprune.errors import CorruptFileError, UnsafeCheckpointError, WriteError
from forceprune.plan import CorruptWeightsError, ModelMismatchError, PlanError
from forceprune.runs import ConfigError, RunDirError, evaluate_run, load_config, prune, run

CONFIG = Path(__file__).parent.parent / "configs" / "lenet5_mnist_etp.toml"
TINY = ["train_subset=300", "test_subset=200", "epochs=1", "dense_epochs=0", "batch_size=100",
        "latency_batch_sizes=[1]", "latency_repeats=3"]


def tiny(out: Path, *extra: str, path: Path = CONFIG):
    return load_config(path, [*TINY, f'output_dir="{out}"', *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny MNIST run (300 images, 1 force epoch) that every case copies."""
    root = os.environ.get("FORCEPRUNE_DATA")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("set FORCEPRUNE_DATA to a directory holding mnist/ to run the reliability tests")
    out = tmp_path_factory.mktemp("finished") / "run"
    run(tiny(out), progress=False)
    return out


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the lock and an interrupted overwrite's backup aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def expect(error: type[BaseException], fix: str, action, watched: Path) -> None:
    """``action()`` raises ``error`` whose message contains ``fix``, and no file under ``watched``
    that existed before changed (nor was deleted)."""
    before = snapshot(watched) if watched.exists() else {}
    with pytest.raises(error) as info:
        action()
    assert fix in str(info.value), str(info.value)
    after = snapshot(watched) if watched.exists() else {}
    assert {k: after.get(k) for k in before} == before, "a file that existed before was changed or deleted"


# -- config ------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


CONFIG_CASES = {
    "unknown key": (lambda d, t: tiny(d, "epoch=3"), ConfigError, "did you mean 'epochs'?"),
    "bad budget value on --overwrite": (lambda d, t: run(tiny(d, "budget.reach=nan"), overwrite=True, progress=False),
                                        ConfigError, "need 0 <= warmup < reach <= 1"),
    "unknown budget option": (lambda d, t: tiny(d, "budget.reech=0.5"), ConfigError, "valid: warmup, reach"),
    "absurd epochs": (lambda d, t: tiny(d, "epochs=100000000"), ConfigError, "at most 100,000"),
    "absurd seed": (lambda d, t: tiny(d, "seed=1099511627776"), ConfigError, "must be in [0, 2**32 - 1]"),
    "TOML syntax error": (lambda d, t: load_config(_write(t / "c.toml", b"epochs = = 3\n")), ConfigError,
                          "is not valid TOML"),
    "binary garbage": (lambda d, t: load_config(_write(t / "c.toml", b"\x89PNG\r\n\x1a\n\x00\xff")), ConfigError,
                       "is not a UTF-8 text file"),
    "not UTF-8": (lambda d, t: load_config(_write(t / "c.toml", 'model = "l\xe9net"\n'.encode("latin-1"))), ConfigError,
                  "is not a UTF-8 text file"),
    "a directory": (lambda d, t: load_config(t), ConfigError, "is a directory"),
    "unknown task": (lambda d, t: load_config(_write(t / "c.toml", b'task = "image_generation"\n')), ConfigError,
                     'choose one of image_classification, language_modeling, text_classification'),
    "text config, unknown key": (
        lambda d, t: load_config(_write(t / "c.toml", b'task = "text_classification"\nepoch = 2\n')), ConfigError,
        "did you mean 'epochs'?"),
    "text config, --set checked too": (
        lambda d, t: load_config(_write(t / "c.toml", b'task = "text_classification"\n'), ["epochs=three"]),
        ConfigError, "epochs = 'three' has the wrong type: expected a number"),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_config(case, copy, tmp_path):
    action, error, fix = CONFIG_CASES[case]
    expect(error, fix, lambda: action(copy, tmp_path), copy)


# -- data --------------------------------------------------------------------------------------------
def test_missing_data_leaves_no_directory(tmp_path):
    out = tmp_path / "run"
    expect(DatasetNotFoundError, "FORCEPRUNE_DATA", lambda: run(tiny(out, f'data_dir="{tmp_path / "none"}"'),
                                                                   progress=False), tmp_path)
    assert not out.exists()


def test_corrupt_data_file_names_it(finished, tmp_path):
    mirror = tmp_path / "data" / "mnist"
    shutil.copytree(Path(os.environ["FORCEPRUNE_DATA"]) / "mnist", mirror)
    victim = mirror / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-10])
    out = tmp_path / "run"
    expect(ChecksumError, "delete the file and fetch it again",
           lambda: run(tiny(out, f'data_dir="{tmp_path / "data"}"'), progress=False), tmp_path)
    assert not out.exists()


# -- run directory -----------------------------------------------------------------------------------
def test_a_finished_run_is_not_overwritten_without_asking(copy):
    expect(RunDirError, "already holds a run", lambda: run(tiny(copy), progress=False), copy)


def test_resume_with_nothing_to_resume(tmp_path):
    expect(RunDirError, "nothing to resume", lambda: run(tiny(tmp_path / "new"), resume=True, progress=False), tmp_path)
    assert not (tmp_path / "new").exists()


def test_resume_with_another_config(copy):
    expect(RunDirError, "epochs (1 -> 2)", lambda: run(tiny(copy, "epochs=2"), resume=True, progress=False), copy)


def test_output_dir_is_a_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    expect(RunDirError, "is a file", lambda: run(tiny(tmp_path / "file"), progress=False), tmp_path)


def test_a_running_directory_is_locked(copy):
    """A lock held by a live process (here: our parent) refuses the second run, naming its pid."""
    (copy / ".forceprune.lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                                        "started": "earlier"}))
    expect(RunDirError, f"pid {os.getppid()}", lambda: run(tiny(copy), overwrite=True, progress=False), copy)


def test_a_stale_lock_is_taken_over(copy):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (copy / ".forceprune.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    report = run(tiny(copy), overwrite=True, progress=False)
    assert report["acc_final"] >= 0 and not (copy / ".forceprune.lock").exists()


def test_overwrite_keeps_old_results_until_the_first_checkpoint(copy, monkeypatch):
    """Interrupted before its first checkpoint, an --overwrite run leaves the old run as it was."""
    from forceprune.runs import Trainer

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    expect(KeyboardInterrupt, "", lambda: run(tiny(copy), overwrite=True, progress=False), copy)
    assert not (copy / ".previous").exists() and not (copy / ".forceprune.lock").exists()


def test_prune_overwrite_with_a_truncated_checkpoint_loses_nothing(copy):
    force = copy / "checkpoints" / "force.pt"
    force.write_bytes(force.read_bytes()[:1000])
    expect(CorruptFileError, "truncated or damaged", lambda: prune(copy, overwrite=True, progress=False), copy)


# -- files read ----------------------------------------------------------------------------------------
def _pickled_code(path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/forceprune-pwned",))

    torch.save({"epoch": 1, "x": Evil()}, path)


FILE_CASES = {
    "config.json damaged": (lambda d: (d / "config.json").write_text("{not json"), lambda d: evaluate_run(d),
                            "config.json is not valid JSON"),
    "config.json binary": (lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"), lambda d: evaluate_run(d),
                           "is not a UTF-8 text file"),
    "plan.json damaged": (lambda d: (d / "pruned" / "plan.json").write_text("[1, 2"), lambda d: evaluate_run(d),
                          "plan.json is not valid JSON"),
    "weights truncated": (lambda d: (d / "pruned" / "model.safetensors").write_bytes(b"\x00" * 10),
                          lambda d: evaluate_run(d), "truncated or corrupted"),
    "checkpoint not a checkpoint": (lambda d: (d / "checkpoints" / "force.pt").write_text("hello"),
                                    lambda d: prune(d, overwrite=True, progress=False), "truncated or damaged"),
    "checkpoint with pickled code": (lambda d: _pickled_code(d / "checkpoints" / "force.pt"),
                                     lambda d: prune(d, overwrite=True, progress=False), "refuses to unpickle"),
    "checkpoint of plain tensors, not ours": (lambda d: torch.save({"w": torch.ones(2)}, d / "checkpoints" / "force.pt"),
                                              lambda d: prune(d, overwrite=True, progress=False),
                                              "is not a forceprune checkpoint (it has no epoch, model, history)"),
}
FILE_ERRORS = {"weights truncated": CorruptWeightsError, "plan.json damaged": PlanError,
               "checkpoint with pickled code": UnsafeCheckpointError, "checkpoint not a checkpoint": CorruptFileError,
               "checkpoint of plain tensors, not ours": CorruptFileError}


@pytest.mark.parametrize("case", FILE_CASES, ids=list(FILE_CASES))
def test_files(case, copy):
    damage, action, fix = FILE_CASES[case]
    damage(copy)
    expect(FILE_ERRORS.get(case, fp.ForcePruneError), fix, lambda: action(copy), copy)
    assert not Path("/tmp/forceprune-pwned").exists()


def test_unsafe_checkpoint_message_never_suggests_weights_only_false(tmp_path):
    _pickled_code(tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        checkpoint.load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(info.value) and "\x1b" not in str(info.value)


def test_report_json_damaged(copy, capsys):
    (copy / "report.json").write_text('{"model": ')
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "report.json is not valid JSON" in err and "forceprune prune" in err and "Traceback" not in err


# -- operating-system faults -------------------------------------------------------------------------
@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                       (errno.EACCES, "permission denied")])
def test_a_write_fault_is_named_leaves_no_partial_file_and_resume_works(tmp_path, monkeypatch, code, fix):
    """The second epoch's checkpoint hits a fault: a named WriteError; the first checkpoint is
    intact; resuming finishes the run."""
    out = tmp_path / "run"
    config = tiny(out, "epochs=2")
    real, calls = checkpoint.atomic_path, []

    def faulty(path):
        calls.append(path)
        if Path(path).name == "force.pt" and len([c for c in calls if Path(c).name == "force.pt"]) == 2:
            raise OSError(code, os.strerror(code))
        return real(path)

    monkeypatch.setattr(checkpoint, "atomic_path", faulty)
    with pytest.raises(WriteError, match=fix):
        run(config, progress=False)
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(out / "checkpoints" / "force.pt")["epoch"] == 1
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "no partial file"
    report = run(config, resume=True, progress=False)
    assert [r["epoch"] for r in report["history"]] == [1, 2]


def test_a_path_too_long_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / ("x" * 300) / "run"
    expect(RunDirError, "too long", lambda: run(tiny(out), progress=False), tmp_path)


def test_an_output_path_below_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    expect(RunDirError, "is a file, not a directory", lambda: run(tiny(tmp_path / "file" / "run"), progress=False),
           tmp_path)


# -- consistency -------------------------------------------------------------------------------------
def test_eval_refuses_a_model_made_for_another_dataset(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "dataset": "fashion_mnist"}))
    expect(RunDirError, "dataset 'mnist' (config.json says 'fashion_mnist')", lambda: evaluate_run(copy), copy)


def test_prune_refuses_checkpoints_of_another_dataset(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "dataset": "cifar10"}))
    expect(RunDirError, "was made for another run: dataset 'mnist' (config.json says 'cifar10')",
           lambda: prune(copy, overwrite=True, progress=False), copy)


def test_load_pruned_names_the_model_it_was_made_for(tmp_path):
    from forceprune.plan import load_pruned, make_plan, save_pruned

    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    pruner = fp.ForcePruner(mlp, torch.randn(1, 8))
    with torch.no_grad():
        mlp[0].weight[:4] = 0
        mlp[0].bias[:4] = 0
    pruner.prune()
    save_pruned(mlp, make_plan(pruner), tmp_path / "p")

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x)

    expect(ModelMismatchError, "the plan was made for a torch.nn.modules.container.Sequential",
           lambda: load_pruned(tmp_path / "p", model_factory=Conv), tmp_path)


# -- API misuse --------------------------------------------------------------------------------------
def test_export_onnx_with_wrong_inputs(tmp_path):
    pytest.importorskip("onnx")
    model = torch.nn.Linear(8, 4)
    expect(fp.ForcePruneError, "does not run on the given example_inputs",
           lambda: fp.export_onnx(model, torch.randn(1, 5), tmp_path / "m.onnx"), tmp_path)
    assert not (tmp_path / "m.onnx").exists()


def test_export_onnx_below_a_file(tmp_path):
    pytest.importorskip("onnx")
    (tmp_path / "file").write_text("mine")
    expect(WriteError, "a part of the path is a file",
           lambda: fp.export_onnx(torch.nn.Linear(4, 2), torch.randn(1, 4), tmp_path / "file" / "m.onnx"), tmp_path)


# -- the command line --------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, fix", [
    (["run", str(CONFIG), "--set", "epoch=3"], "did you mean 'epochs'?"),
    (["prune", "{copy}", "--overwrite"], None),
    (["eval", "{missing}"], "not a forceprune run directory"),
    (["run", str(CONFIG), "--output-dir", "{copy}", *[a for t in TINY for a in ("--set", t)]], "--resume to continue it"),
    (["run", str(CONFIG), "--output-dir", "{new}", "--resume"], "start it without --resume"),
])
def test_cli_errors_are_one_line_without_traceback(argv, fix, copy, tmp_path, capsys):
    if fix is None:  # a truncated checkpoint under prune --overwrite
        (copy / "checkpoints" / "force.pt").write_bytes(b"x")
        fix = "truncated or damaged"
    argv = [a.format(copy=copy, missing=tmp_path / "missing", new=tmp_path / "new") for a in argv]
    before = snapshot(copy)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fix in err and "Traceback" not in err and err.startswith("forceprune ")
    assert snapshot(copy) == before
