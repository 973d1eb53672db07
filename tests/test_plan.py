"""Portable pruning plans: save -> load rebuilds the pruned model bit for bit; every bad input
gets a clear error and loses nothing."""
import errno
import json
import os
import pickle
import shutil

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forceprune as fp
from forceprune import plan as P
from forceprune.plan import store
from forceprune.models import create_model

import zoo


def _zero(pruner, masks, include="all"):
    for us in pruner.unit_sets:
        if us.name in masks:
            us.zero_(masks[us.name], include)


def _halves(pruner):
    out = {}
    for us in pruner.unit_sets:
        m = torch.zeros(us.size, dtype=torch.bool)
        m[1::2] = True
        out[us.name] = m
    return out


def _pruned(name, include="all", rounds=1):
    model, x = zoo.build(name)
    pruner = fp.ForcePruner(model, x[:1], force="etp" if include == "all" else "etp-official")
    for _ in range(rounds):
        _zero(pruner, _halves(pruner), include)
        pruner.prune(calibration_inputs=x)
    return model, x, pruner


def _outputs_equal(a, b, x):
    with torch.no_grad():
        return torch.equal(a(x), b(x))


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,include,rounds",
    [
        ("plain_cnn", "weights", 1),  # folding creates conv2.bias (bias=False in the base model)
        ("residual", "all", 2),  # coupled by additions, two removal rounds
        ("dense_concat", "all", 1),
        ("inverted_residual", "weights", 1),
        ("mlp", "all", 2),
        ("transformer_block", "all", 1),  # attention heads: on_removed replaces the module
    ],
)
def test_save_load_is_bit_identical(tmp_path, name, include, rounds):
    model, x, pruner = _pruned(name, include, rounds)
    plan = P.make_plan(pruner)
    assert len(plan["rounds"]) == rounds and plan["model"]["source"] == "custom"
    P.save_pruned(model, plan, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == [P.WEIGHTS_FILE, P.PLAN_FILE]
    loaded, plan2 = P.load_pruned(tmp_path / "out", model_factory=zoo.ZOO[name][0])
    assert not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert _outputs_equal(model, loaded, x)
    assert plan2["weights"]["sha256"] and plan2["rounds"] == plan["rounds"]


def test_folded_bias_is_recreated(tmp_path):
    model, x, pruner = _pruned("plain_cnn", "weights")
    assert model.conv2.bias is not None and zoo.PlainCNN().conv2.bias is None
    P.save_pruned(model, P.make_plan(pruner), tmp_path / "out")
    loaded, _ = P.load_pruned(tmp_path / "out", model_factory=zoo.PlainCNN)
    assert torch.equal(loaded.conv2.bias, model.conv2.bias)


def test_registry_model_round_trip_needs_no_factory(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    pruner = fp.ForcePruner(model, x[:1])
    _zero(pruner, _halves(pruner))
    pruner.prune(calibration_inputs=x)
    plan = P.make_plan(pruner, model_name="lenet5", model_kwargs={"num_classes": 10, "in_channels": 1})
    P.save_pruned(model, plan, tmp_path / "lenet")
    rng = torch.get_rng_state()
    loaded, _ = P.load_pruned(tmp_path / "lenet")
    assert torch.equal(torch.get_rng_state(), rng)  # building the base model did not move the RNG
    assert _outputs_equal(model, loaded, x)
    assert loaded.conv1.out_channels == 10


class TiedLM(nn.Module):
    """Embedding and output head share one weight (stored once, restored tied)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        h = self.embed(tokens)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    model, x = TiedLM().eval(), torch.randint(0, 20, (2, 5))
    pruner = fp.ForcePruner(model, x[:1])
    _zero(pruner, _halves(pruner))
    pruner.prune(calibration_inputs=x)
    P.save_pruned(model, P.make_plan(pruner), tmp_path / "t")
    assert P.read_plan(tmp_path / "t")["weights"]["aliases"] == {"head.weight": "embed.weight"}
    loaded, _ = P.load_pruned(tmp_path / "t", model_factory=TiedLM)
    assert loaded.head.weight is loaded.embed.weight
    assert _outputs_equal(model, loaded, x)


def test_unpruned_model_and_explicit_example_inputs(tmp_path):
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x[:1])
    plan = P.make_plan(pruner, example_inputs=(x[:1],))
    assert plan["rounds"] == [] and plan["example_inputs"]["type"] == "tuple"
    P.save_pruned(model, plan, tmp_path / "m")
    loaded, _ = P.load_pruned(tmp_path / "m", model_factory=zoo.MLP)
    assert _outputs_equal(model, loaded, x)


def test_plan_without_stored_inputs_needs_example_inputs(tmp_path):
    model, x, pruner = _pruned("mlp")
    plan = P.make_plan(pruner)
    plan["example_inputs"] = None  # e.g. inputs holding objects JSON cannot store
    P.save_pruned(model, plan, tmp_path / "m")
    with pytest.raises(P.PlanError, match="example_inputs="):
        P.load_pruned(tmp_path / "m", model_factory=zoo.MLP)
    loaded, _ = P.load_pruned(tmp_path / "m", model_factory=zoo.MLP, example_inputs=x[:1])
    assert _outputs_equal(model, loaded, x)


def test_plan_from_rounds_builds_the_plan_make_plan_writes(tmp_path):
    model, x, pruner = _pruned("plain_cnn", "weights")  # folding creates conv2.bias
    rounds = P.rounds_from_history(pruner.history, pruner.unit_sets)
    plan = P.plan_from_rounds(rounds, model_identity=P.identify_model(model), example_inputs=x[:1])
    made = P.make_plan(pruner)
    for key in ("format", "format_version", "versions", "model", "rounds", "example_inputs"):
        assert plan[key] == made[key], key
    assert plan["versions"]["forceprune"] == fp.__version__ and plan["weights"] is None
    assert P.validate_plan(plan, require_weights=False) is plan
    P.save_pruned(model, plan, tmp_path / "m")
    loaded, _ = P.load_pruned(tmp_path / "m", model_factory=zoo.PlainCNN)
    assert _outputs_equal(model, loaded, x)
    # what a training callback does on resume: replay the rounds it kept on a fresh base model,
    # recreate the folded biases, then load the checkpoint's weights
    fresh = zoo.PlainCNN().eval()
    P.replay_plan(fresh, P.plan_from_rounds(rounds, model_identity=P.identify_model(fresh)), x[:1])
    assert fresh.conv2.bias is None
    assert P.ensure_biases(fresh, {k: tuple(v.shape) for k, v in model.state_dict().items()}) == ["conv2.bias"]
    fresh.load_state_dict(model.state_dict())
    assert _outputs_equal(model, fresh, x)
    with pytest.raises(fp.ForcePruneError, match="JSON-serialisable"):
        P.plan_from_rounds([], model_identity={"source": "registry", "name": "lenet5", "kwargs": {"act": nn.ReLU}})


def test_saved_files_hold_no_pickle(tmp_path):
    model, _, pruner = _pruned("mlp")
    P.save_pruned(model, P.make_plan(pruner), tmp_path / "m")
    plan = json.loads((tmp_path / "m" / P.PLAN_FILE).read_text())
    assert plan["format"] == P.PLAN_FORMAT and plan["versions"]["forceprune"] == fp.__version__
    assert plan["pruner"]["force"]["name"] == "etp"
    raw = (tmp_path / "m" / P.WEIGHTS_FILE).read_bytes()
    assert not raw.startswith(b"PK") and b"\x80\x02" not in raw[:16]  # not a torch zip / pickle stream


# -- bad input --------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model, x, pruner = _pruned("mlp")
    path = P.save_pruned(model, P.make_plan(pruner), tmp_path / "saved")
    return model, x, path


def _edit_plan(path, edit):
    file = path / P.PLAN_FILE
    plan = json.loads(file.read_text())
    edit(plan)
    file.write_text(json.dumps(plan))


class WideMLP(zoo.MLP):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 20), nn.Linear(20, 12)


class FourClassMLP(zoo.MLP):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(12, 4)


def test_base_model_mismatch_names_the_layer(saved):
    _, _, path = saved
    with pytest.raises(P.ModelMismatchError, match=r"'fc1' has 20 units .* expects 16"):
        P.load_pruned(path, model_factory=WideMLP)
    with pytest.raises(P.ModelMismatchError, match=r"'out.weight'.*\(3, 6\).*\(4, 6\)"):
        P.load_pruned(path, model_factory=FourClassMLP)
    with pytest.raises(P.PlanError, match="model_factory"):
        P.load_pruned(path)  # a custom model needs its factory


def test_registry_mismatch_names_the_layer(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1).eval()
    pruner = fp.ForcePruner(model, torch.randn(1, 1, 28, 28))
    P.save_pruned(model, P.make_plan(pruner, model_name="lenet5", model_kwargs={"in_channels": 1}), tmp_path / "l")
    _edit_plan(tmp_path / "l", lambda p: p["model"]["kwargs"].update(num_classes=5))
    with pytest.raises(P.ModelMismatchError, match="classifier.weight"):
        P.load_pruned(tmp_path / "l")
    with pytest.raises(fp.ForcePruneError, match="not a registered model"):
        P.make_plan(pruner, model_name="lenet6")


def test_incompatible_versions_are_refused(saved):
    _, _, path = saved
    _edit_plan(path, lambda p: p["versions"].update(forceprune="7.1.0"))
    with pytest.raises(P.PlanError, match=r"forceprune 7\.1\.0.*major.*forceprune==7"):
        P.load_pruned(path, model_factory=zoo.MLP)
    _edit_plan(path, lambda p: (p["versions"].update(forceprune=fp.__version__), p.update(format_version=99)))
    with pytest.raises(P.PlanError, match="newer"):
        P.load_pruned(path, model_factory=zoo.MLP)


def test_truncated_or_corrupted_weights_are_detected(saved):
    _, _, path = saved
    weights = path / P.WEIGHTS_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(P.CorruptWeightsError, match="truncated or corrupted"):
        P.load_pruned(path, model_factory=zoo.MLP)
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(P.CorruptWeightsError, match="sha256"):
        P.load_pruned(path, model_factory=zoo.MLP)
    weights.unlink()
    with pytest.raises(P.CorruptWeightsError, match="missing"):
        P.load_pruned(path, model_factory=zoo.MLP)
    (path / P.PLAN_FILE).write_text('{"format": "forceprune-plan", ')
    with pytest.raises(P.PlanError, match="not valid JSON"):
        P.load_pruned(path, model_factory=zoo.MLP)


def test_existing_output_is_refused_unless_overwrite(saved, tmp_path):
    model, x, path = saved
    plan = P.read_plan(path)
    with pytest.raises(P.OutputExistsError, match="overwrite=True"):
        P.save_pruned(model, plan, path)
    other = tmp_path / "not_ours"
    other.mkdir()
    (other / "data.txt").write_text("precious")
    with pytest.raises(P.OutputExistsError, match="not a forceprune save directory"):
        P.save_pruned(model, plan, other, overwrite=True)
    (tmp_path / "file").write_text("precious")
    with pytest.raises(P.OutputExistsError):
        P.save_pruned(model, plan, tmp_path / "file", overwrite=True)
    assert (other / "data.txt").read_text() == "precious" and (tmp_path / "file").read_text() == "precious"
    with torch.no_grad():
        model.out.bias += 1.0
    P.save_pruned(model, plan, path, overwrite=True)
    loaded, _ = P.load_pruned(path, model_factory=zoo.MLP)
    assert _outputs_equal(model, loaded, x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "not_ours", "saved"]  # no temp/backup left


@pytest.mark.parametrize("where", ["fsync", "mid_write", "mkdir", "swap"])
def test_failed_save_leaves_previous_output_intact(saved, tmp_path, monkeypatch, where):
    model, x, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    plan = P.read_plan(path)
    with torch.no_grad():
        model.out.bias += 1.0
    if where == "fsync":
        def fail(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", fail)
    elif where == "mid_write":
        real = store._write_file  # save_pruned writes each file of the new directory through it

        def half(file, data):
            if file.name == P.WEIGHTS_FILE:
                file.write_bytes(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            real(file, data)
        monkeypatch.setattr(store, "_write_file", half)
    elif where == "mkdir":
        def denied(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(os, "mkdir", denied)
    else:
        real_replace = os.replace

        def flaky(src, dst):
            if ".tmp-" in str(src):  # moving the finished temp dir into place fails
                raise OSError(errno.EIO, "I/O error")
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(P.SaveError) as info:
        P.save_pruned(model, plan, path, overwrite=True)
    assert isinstance(info.value, OSError)
    if where in ("fsync", "mid_write"):
        assert "no space left" in str(info.value)
    if where == "mkdir":
        assert "permission denied" in str(info.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # temp and backup removed
    P.load_pruned(path, model_factory=zoo.MLP)


def test_safe_torch_load_refuses_pickled_code(tmp_path):
    model, _ = zoo.build("mlp")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    sd = P.safe_torch_load(tmp_path / "sd.pt")
    assert torch.equal(sd["fc1.weight"], model.fc1.weight)
    torch.save(model, tmp_path / "whole.pt")  # pickles the class: code
    with pytest.raises(P.UnsafeCheckpointError, match="state_dict"):
        P.safe_torch_load(tmp_path / "whole.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": os.getcwd}, f)
    with pytest.raises((P.UnsafeCheckpointError, P.CorruptWeightsError)):
        P.safe_torch_load(tmp_path / "evil.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "sd.pt").read_bytes()[:100])
    with pytest.raises(P.CorruptWeightsError, match="truncated"):
        P.safe_torch_load(tmp_path / "cut.pt")


# -- property-based ----------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_kept_subsets_round_trip(tmp_path_factory, data):
    name = data.draw(st.sampled_from(["mlp", "plain_cnn", "inverted_residual"]), label="model")
    include = data.draw(st.sampled_from(["all", "weights"]), label="include")
    model, x = zoo.build(name, seed=data.draw(st.integers(0, 3), label="seed"))
    pruner = fp.ForcePruner(model, x[:1], force="etp" if include == "all" else "etp-official")
    wanted = {}
    for i, us in enumerate(pruner.unit_sets):
        # one set keeps >= 2 units: ForcePruner cannot re-trace a model with no prunable unit left
        kept = data.draw(st.sets(st.integers(0, us.size - 1), min_size=2 if i == 0 else 1, max_size=us.size), label=us.name)
        wanted[us.name] = sorted(kept)
        us.zero_(torch.tensor([i not in kept for i in range(us.size)]), include)
    report = pruner.prune(calibration_inputs=x)
    assert report.kept == wanted
    out = tmp_path_factory.mktemp("fuzz") / "m"
    P.save_pruned(model, P.make_plan(pruner), out)
    loaded, _ = P.load_pruned(out, model_factory=zoo.ZOO[name][0])
    assert _outputs_equal(model, loaded, x)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    model, x, pruner = _pruned("mlp")
    return P.save_pruned(model, P.make_plan(pruner), tmp_path_factory.mktemp("ref") / "m")


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, prefix + (i,))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_plans_give_clear_errors(reference_dir, tmp_path_factory, data):
    plan = json.loads((reference_dir / P.PLAN_FILE).read_text())
    paths = [p for p in _paths(plan) if p]
    where = data.draw(st.sampled_from(paths), label="path")
    parent = plan
    for k in where[:-1]:
        parent = parent[k]
    if data.draw(st.booleans(), label="delete"):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(_json_values, label="value")
    out = tmp_path_factory.mktemp("bad") / "m"
    shutil.copytree(reference_dir, out)
    (out / P.PLAN_FILE).write_text(json.dumps(plan))
    try:
        P.load_pruned(out, model_factory=zoo.MLP)
    except fp.ForcePruneError as exc:
        assert str(exc) and "Traceback" not in str(exc)
    # anything else (KeyError, TypeError, ...) fails the test


@pytest.mark.parametrize("text", ["[]", "null", "3", '"plan"', "{}", '{"format": "forceprune-plan"}'])
def test_plan_json_of_the_wrong_shape(reference_dir, tmp_path, text):
    out = tmp_path / "m"
    shutil.copytree(reference_dir, out)
    (out / P.PLAN_FILE).write_text(text)
    with pytest.raises(P.PlanError, match="malformed plan|forceprune plan"):
        P.load_pruned(out, model_factory=zoo.MLP)
