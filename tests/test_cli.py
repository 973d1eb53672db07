"""The forceprune command line: help, error handling and a tiny end-to-end run on MNIST."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forceprune.cli import build_parser, main
from forceprune.runs import Trainer
from forceprune.runs.rundir import Claim, RunDirError, check_output_dir
from forceprune.visual import PICTURES

CONFIGS = Path(__file__).parent.parent / "configs"
SUBCOMMANDS = ["run", "train", "prune", "eval", "report", "bench"]
REPORT_KEYS = {
    "model", "dataset", "dataset_note", "force", "force_options", "seed", "epochs", "acc_dense",
    "acc_before_removal", "acc_after_removal", "acc_final", "acc_best", "acc_best_note", "macs_before", "macs_after",
    "macs_reduction", "params_before", "params_after", "latency_ms_before", "latency_ms_after", "max_output_error",
    "layers", "history", "force_field", "wall_s", "command", "versions", "config",
}
TINY = ["--set", "train_subset=600", "--set", "test_subset=300", "--set", "epochs=2", "--set", "dense_epochs=1",
        "--set", "batch_size=100", "--set", "latency_batch_sizes=[1, 8]", "--set", "latency_repeats=3", "-q"]


def test_main_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "examples:" in out
    assert all(f"\n    {name}" in out for name in SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and f"forceprune {name}" in out and "example" in out


def test_overwrite_and_resume_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "x.toml", "--overwrite", "--resume"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_config_error_is_one_line_without_traceback(capsys):
    code = main(["run", str(CONFIGS / "lenet5_mnist_etp.toml"), "--set", "epoch=3"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == ["forceprune run: error: unknown override key 'epoch': did you mean 'epochs'?"]


def test_report_of_missing_run_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "report.json does not exist" in capsys.readouterr().err


def test_bench_rejects_unknown_methods_and_bad_seeds(capsys):
    assert main(["bench", "quick", "--methods", "etp,magic"]) == 2
    assert "unknown methods ['magic']; available: dense" in capsys.readouterr().err
    assert main(["bench", "quick", "--seeds", "0,one"]) == 2
    assert "--seeds takes integers" in capsys.readouterr().err
    assert main(["bench", "llm", "--resume"]) == 2
    assert "--resume is for the vision suites" in capsys.readouterr().err


def test_bench_unknown_suite(capsys):
    assert main(["bench", "lenet5_mnist"]) == 2
    assert "unknown benchmark suite 'lenet5_mnist'; available: quick" in capsys.readouterr().err


def test_output_dir_protection(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already holds a run"):
        check_output_dir(tmp_path)
    with pytest.raises(RunDirError, match="is an input"):
        check_output_dir(tmp_path, overwrite=True, protected=(tmp_path / "report.json",))
    stale = check_output_dir(tmp_path, overwrite=True)
    assert (tmp_path / "report.json").exists()  # checking alone never deletes
    claim = Claim(tmp_path, stale)
    assert not (tmp_path / "report.json").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    claim.rollback()  # the new run failed before its first checkpoint: the old report is back
    assert (tmp_path / "report.json").read_text() == "{}" and not (tmp_path / ".previous").exists()
    Claim(tmp_path, check_output_dir(tmp_path, overwrite=True)).commit()
    assert not (tmp_path / "report.json").exists() and not (tmp_path / ".previous").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="is a file"):
        check_output_dir(tmp_path / "file")


def test_missing_data_leaves_no_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(CONFIGS / "lenet5_mnist_etp.toml"), "--data-dir", str(tmp_path / "nodata"),
                 "--output-dir", str(out)])
    assert code == 2 and "not found" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """One tiny run (600 training images, 1 dense + 2 force epochs) shared by the end-to-end tests."""
    root = os.environ.get("FORCEPRUNE_DATA")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("set FORCEPRUNE_DATA to a directory holding mnist/ to run the end-to-end tests")
    out = tmp_path_factory.mktemp("run") / "lenet"
    code = main(["run", str(CONFIGS / "lenet5_mnist_etp.toml"), "--output-dir", str(out), *TINY])
    assert code == 0
    return out


def test_run_writes_report_pictures_and_model(mnist_run):
    report = json.loads((mnist_run / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["epochs"] == 2 and report["config"]["train_subset"] == 600
    assert set(report["latency_ms_before"]) == {"1", "8"} == set(report["latency_ms_after"])
    assert [r["phase"] for r in report["history"]] == ["dense", "force", "force"]
    assert 0 <= report["acc_final"] <= 100
    if not any("budget" in w for w in report["removal_warnings"]):  # met by captured zeros: lossless
        assert report["acc_after_removal"] == pytest.approx(report["acc_before_removal"])
        assert report["max_output_error"] < 1e-5
    else:  # 12 steps cannot meet a 10x budget by capture: the weakest units went too, and it says so
        assert report["macs_after"] <= 0.1 * 1.03 * report["macs_before"]
    assert report["macs_after"] <= report["macs_before"] and report["layers"]
    assert "NOT used for model selection" in report["acc_best_note"]
    files = ["report.html", "pruned/model.safetensors", "pruned/plan.json", "config.json", "checkpoints/force.pt"]
    for name in [*PICTURES.values(), *files]:
        assert (mnist_run / name).exists(), name


def test_second_run_in_same_dir_is_refused(mnist_run, capsys):
    code = main(["run", str(CONFIGS / "lenet5_mnist_etp.toml"), "--output-dir", str(mnist_run), *TINY])
    assert code == 2 and "already holds a run" in capsys.readouterr().err


def test_resume_of_finished_run_with_other_config_is_refused(mnist_run, capsys):
    args = ["run", str(CONFIGS / "lenet5_mnist_etp.toml"), "--output-dir", str(mnist_run), *TINY]
    assert main([*args, "--set", "epochs=3", "--resume"]) == 2
    assert "epochs (2 -> 3)" in capsys.readouterr().err


def test_eval_reproduces_final_accuracy(mnist_run, capsys):
    report = json.loads((mnist_run / "report.json").read_text())
    assert main(["eval", str(mnist_run)]) == 0
    assert f"{report['acc_final']:.2f} %" in capsys.readouterr().out


def test_report_rerenders(mnist_run, capsys):
    (mnist_run / "widths.png").unlink()
    assert main(["report", str(mnist_run)]) == 0
    assert (mnist_run / "widths.png").exists() and "report.html" in capsys.readouterr().out


def test_ctrl_c_then_resume_matches_uninterrupted_run(mnist_run, tmp_path, monkeypatch, capsys):
    original = Trainer.train_epoch

    def interrupted_in_second_force_epoch(self):
        if self.phase.name == "force" and self.epoch == 1:
            raise KeyboardInterrupt
        return original(self)

    out = tmp_path / "lenet"
    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_second_force_epoch)
    assert main(["run", str(CONFIGS / "lenet5_mnist_etp.toml"), "--output-dir", str(out), *TINY]) == 130
    err = capsys.readouterr().err
    assert "force epoch 1/2, intact" in err
    monkeypatch.undo()
    resume = shlex.split(err.split("Resume with: ")[1].strip())
    assert resume[0] == "forceprune" and resume[-1] == "--resume"
    assert main(resume[1:]) == 0
    resumed, straight = load_file(out / "pruned/model.safetensors"), load_file(mnist_run / "pruned/model.safetensors")
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    a, b = (json.loads((d / "report.json").read_text()) for d in (out, mnist_run))
    assert [r["eval_acc"] for r in a["history"]] == [r["eval_acc"] for r in b["history"]]


def test_prune_subcommand_reproduces_run(mnist_run, tmp_path, capsys):
    trained = tmp_path / "trained"
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "config.json").write_bytes((mnist_run / "config.json").read_bytes())
    for phase in ("dense", "force"):
        (trained / "checkpoints" / f"{phase}.pt").write_bytes((mnist_run / "checkpoints" / f"{phase}.pt").read_bytes())
    assert main(["prune", str(trained), "-q"]) == 0
    assert "MACs per sample" in capsys.readouterr().out
    pruned, straight = load_file(trained / "pruned/model.safetensors"), load_file(mnist_run / "pruned/model.safetensors")
    assert all(torch.equal(pruned[k], straight[k]) for k in straight)
    assert main(["prune", str(trained), "-q"]) == 2  # the report exists: needs --overwrite


def test_train_subcommand_keeps_checkpoint_without_removal(mnist_run, tmp_path, capsys):
    out = tmp_path / "trained"
    args = ["train", str(CONFIGS / "lenet5_mnist_etp.toml"), "--output-dir", str(out), *TINY,
            "--set", "epochs=1", "--set", "dense_epochs=0", "--set", "train_subset=200"]
    assert main(args) == 0
    assert "forceprune prune" in capsys.readouterr().out
    assert (out / "checkpoints" / "force.pt").exists() and not (out / "report.json").exists()
