"""ONNX export of pruned models, checked with onnxruntime; atomic, never clobbers by accident."""
import os

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import forceprune as fp  # noqa: E402
from forceprune import export as fpe  # noqa: E402
from forceprune.export import export_onnx  # noqa: E402

import zoo  # noqa: E402


def _pruned(name):
    model, x = zoo.build(name)
    pruner = fp.ForcePruner(model, x[:1])
    for us in pruner.unit_sets:
        mask = torch.zeros(us.size, dtype=torch.bool)
        mask[1::2] = True
        us.zero_(mask, "all")
    report = pruner.prune(calibration_inputs=x)
    assert report.params_after < report.params_before
    return model, x


def test_pruned_cnn_exports_with_dynamo_and_matches_onnxruntime(tmp_path):
    import onnx

    model, x = _pruned("residual")
    path = tmp_path / "model.onnx"
    info = export_onnx(model, x, path)
    assert info["exporter"] in ("dynamo", "legacy")
    assert info["max_abs_diff"] < 1e-4
    onnx.checker.check_model(onnx.load(str(path)))
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # one file, no temp or external data left


def test_pruned_transformer_exports_with_the_legacy_exporter(tmp_path):
    model, tokens = _pruned("transformer_block")
    info = export_onnx(model, tokens, tmp_path / "t.onnx", dynamo=False)
    assert info["exporter"] == "legacy" and info["max_abs_diff"] < 1e-4
    assert model.training is False  # built in eval mode by the zoo; export restores the mode


def test_existing_path_is_refused_unless_overwrite(tmp_path):
    model, x = _pruned("mlp")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(fp.ForcePruneError, match="overwrite=True"):
        export_onnx(model, x, path, dynamo=False)
    assert path.read_bytes() == b"keep me"
    info = export_onnx(model, x, path, dynamo=False, overwrite=True)
    assert path.read_bytes() != b"keep me" and info["max_abs_diff"] < 1e-5


def test_a_failed_export_or_check_leaves_the_old_file_intact(tmp_path, monkeypatch):
    model, x = _pruned("mlp")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")

    def broken(model, args, kwargs, tmp, dynamo, opset):
        tmp.write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fpe, "_export", broken)
    with pytest.raises(fp.ForcePruneError, match="No space left"):
        export_onnx(model, x, path, overwrite=True)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["m.onnx"]
    monkeypatch.undo()

    monkeypatch.setattr(fpe, "_check", lambda *a: 1.0)  # onnxruntime disagrees with PyTorch
    with pytest.raises(fp.ForcePruneError, match="nothing was written"):
        export_onnx(model, x, path, overwrite=True, dynamo=False)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_training_mode_is_restored(tmp_path):
    model, x = _pruned("mlp")
    model.train()
    export_onnx(model, x, tmp_path / "m.onnx", dynamo=False, check=False)
    assert model.training
