"""A miniature benchmark (two methods, one epoch, 1k images) so the harness cannot rot."""
import json

import pytest

from benchmarks import suites as bench
from forceprune.errors import ForcePruneError


def test_smoke_suite_writes_json_markdown_and_plot(data_dir, tmp_path):
    result = bench.main("smoke", data_dir=data_dir, output_dir=str(tmp_path))
    methods = {p["method"] for p in result["points"]}
    assert methods == {"etp", "tp_group_norm"}
    for p in result["points"]:
        assert 0 <= p["acc_final"] <= 100
        assert p["macs_after"] < p["macs_before"] or p["beta"] is not None
        assert p["latency"]["eager_b1"]["dense_ms"] > 0
    etp = next(p for p in result["points"] if p["method"] == "etp" and p["beta"] is None)
    fixed = next(p for p in result["points"] if p["method"] == "etp" and p["beta"] == 0.5)
    assert fixed["level"] is None and fixed["macs_reached_vs_target"] is None, "a fixed-beta point has no target"
    assert etp["max_output_error"] is not None, "force methods measure the removal error"
    assert etp["step_overhead"] is not None and etp["macs_reached_vs_target"] > 0
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["summary"] and (tmp_path / "smoke.png").stat().st_size > 1000
    table = (tmp_path / "smoke.md").read_text()
    assert "| etp |" in table and "| tp_group_norm |" in table and "fixed β=0.5" in table
    assert etp["latency"]["nchw_b1"]["pruned_ms"] > 0, "conv models on CPU are also timed in NCHW"
    assert "b1 fastest: dense → pruned ms" in table, "the speed table"


def test_variants_cover_starting_betas_and_width_rounding():
    from benchmarks.vision import SUITES, Suite, variants

    spec = Suite("t", "lenet5", "mnist", epochs=1, levels=(0.5, 0.2), start_betas=(1e-3, 1e-1), round_tos=(8,),
                 betas=(0.5,))
    got = variants(spec, "torque")
    assert {(v["level"], v["beta"], v["round_to"]) for v in got} == {
        (0.5, 1e-3, 1), (0.5, 1e-1, 1), (0.2, 1e-3, 1), (0.2, 1e-1, 1), (0.5, None, 8), (0.2, None, 8), (None, 0.5, 1)}
    assert variants(spec, "tp_l1") == [{"level": 0.5, "beta": None, "round_to": 1}, {"level": 0.2, "beta": None, "round_to": 1}]
    assert variants(spec, "dense") == [{"level": 1.0, "beta": None, "round_to": 1}]
    assert len(variants(SUITES["cifar_start"], "gravity")) == 3


def test_a_rounded_point_asks_the_budget_for_it():
    from benchmarks.vision import SUITES, _config

    config = _config(SUITES["cifar_speed"], "etp", 0.3, 0, None, round_to=16)
    assert config.budget == {"round_to": 16} and config.target_macs == 0.3
    assert _config(SUITES["cifar_speed"], "etp", 0.3, 0, None).budget == {}


def test_a_suite_budget_reaches_every_force_point_and_merges_with_rounding():
    from dataclasses import replace

    from benchmarks.vision import SUITES, _config

    spec = SUITES["headline_reach"]
    assert _config(spec, "etp", 0.05, 0, None).budget == {"reach": 0.5}
    assert _config(replace(spec, round_tos=(8,)), "etp", 0.05, 0, None, round_to=8).budget == {"reach": 0.5, "round_to": 8}


def test_unknown_suite_names_the_available_ones():
    with pytest.raises(ValueError, match="available: quick"):
        bench.main("nope")


def test_a_stopped_suite_keeps_the_points_that_ran(data_dir, tmp_path, monkeypatch):
    from benchmarks import vision

    original, calls = vision.run_point, []

    def stops_at_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(vision, "run_point", stops_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        bench.main("smoke", data_dir=data_dir, output_dir=str(tmp_path), seeds=(3,))
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert len(saved["points"]) == 1 and saved["points"][0]["seed"] == 3
    assert saved["command"].endswith("--seeds 3"), "the command says how to reproduce it"


def test_a_diverged_point_is_reported_and_the_suite_goes_on(data_dir, tmp_path, monkeypatch):
    from benchmarks import vision
    from forceprune.errors import NonFiniteError

    original = vision.run_point

    def tp_diverges(spec, method, *args, **kwargs):
        if method == "tp_group_norm":
            raise NonFiniteError("the loss is nan at step 3 of the force phase")
        return original(spec, method, *args, **kwargs)

    monkeypatch.setattr(vision, "run_point", tp_diverges)
    result = bench.main("smoke", data_dir=data_dir, output_dir=str(tmp_path))
    assert {p["method"] for p in result["points"]} == {"etp", "tp_group_norm"}, "the points after it ran"
    (row,) = [r for r in result["summary"] if r["method"] == "tp_group_norm"]
    assert row["diverged"] == 1 and row["acc_final"] is None
    assert "diverged in 1/1 seeds" in (tmp_path / "smoke.md").read_text()


def test_resume_keeps_the_points_that_ran_and_runs_the_rest(data_dir, tmp_path, monkeypatch):
    from benchmarks import vision
    from forceprune.errors import ForcePruneError

    first = bench.main("smoke", data_dir=data_dir, output_dir=str(tmp_path), methods=("etp",))
    calls = []
    original = vision.run_point

    def counted(spec, method, *args, **kwargs):
        calls.append(method)
        return original(spec, method, *args, **kwargs)

    monkeypatch.setattr(vision, "run_point", counted)
    again = bench.main("smoke", data_dir=data_dir, output_dir=str(tmp_path), resume=True)
    assert calls == ["tp_group_norm"], "only the missing method ran"
    kept = [p for p in again["points"] if p["method"] == "etp"]
    assert kept == first["points"], "the earlier points are kept as they were"
    assert again["reused"]["points"] == len(kept) and again["command"].endswith("--resume")
    assert "kept from an earlier run" in (tmp_path / "smoke.md").read_text()
    with pytest.raises(ForcePruneError, match="another budget.*epochs"):
        bench.main("smoke", data_dir=data_dir, output_dir=str(tmp_path), resume=True, epochs=2)


def test_a_starting_strength_suite_plots_accuracy_against_the_starting_beta(tmp_path):
    from benchmarks.vision_report import markdown, plot, summarise

    points = [{"method": m, "level": 0.3, "beta": b, "round_to": 1, "seed": 0, "acc_final": a, "acc_before_removal": a,
               "acc_after_removal": a, "macs_reduction": 3.3, "macs_reached_vs_target": 1.0, "step_overhead": 0.01,
               "latency": None} for m, b, a in [("etp", 1e-3, 53.0), ("etp", 1e-1, 52.0), ("torque", 1e-3, 46.0)]]
    result = {"suite": {"name": "t", "model": "resnet20", "dataset": "cifar10", "note": "", "epochs": 1,
                        "finetune_epochs": 0, "seeds": [0]},
              "summary": summarise(points), "points": points, "command": "c", "date": "d", "machine": "m", "wall_s": 1.0}
    plot(result, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert "0.3 (3×), from β=0.001" in markdown(result)


def test_step_overhead_keeps_the_force_active_through_a_met_budget():
    """A controller update inside the timed rounds finds the budget met and switches the force
    off; the measurement must time the force, not its absence, and leave the run as it was."""
    from types import SimpleNamespace

    import torch

    import forceprune as fp
    from benchmarks.common import step_overhead

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(16, 8)
    pruner = fp.ForcePruner(model, x[:1], "etp", target_macs=0.9, total_steps=40, budget={"every": 2})
    with torch.no_grad():  # half the hidden neurons at exact zero: captured, the budget is met
        model[0].weight[:16], model[0].bias[:16], model[2].weight[:, :16] = 0.0, 0.0, 0.0
    pruner.capture()
    assert pruner.controller.reached and pruner.kept_fraction() <= 0.9
    pruner.steps = 40  # the end of training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scales, penalty = [], pruner.penalty

    def recording_penalty():
        scales.append(pruner.scale)
        return penalty()

    pruner.penalty = recording_penalty
    task = SimpleNamespace(train_batches=[(x, None)], objective=lambda m, batch: (m(batch[0]).pow(2).mean(),))
    step_overhead(model, pruner, task, steps=6)
    assert len(scales) == 6 and min(scales) > 0, f"the force was off during the measurement: {scales}"
    assert pruner.controller.reached and pruner.steps == 40, "the pruner's state is restored"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_overhead_benchmark_writes_its_table(tmp_path):
    import json

    from benchmarks import overhead

    result = overhead.main(["--steps", "2", "--repeats", "1", "--models", "lenet5", "--methods", "etp",
                            "--output-dir", str(tmp_path)])
    (row,) = result["rows"]
    assert row["model"] == "lenet5" and row["unit_sets"] == 3 and row["step_ms"] > 0
    assert json.loads((tmp_path / "overhead.json").read_text())["rows"][0]["method"] == "etp"
    assert "| lenet5 | etp | 3 |" in (tmp_path / "overhead.md").read_text()


def _sst2_result(points: list[tuple[str, float, int, float]], command: str, budget: dict | None = None) -> dict:
    """A minimal sst2 suite result: (method, level, seed, final dev accuracy) per point."""
    def point(method, level, seed, acc):
        return {"method": method, "level": level, "seed": seed, "acc_dev": acc, "acc_test": acc - 1,
                "acc_dev_before_removal": acc, "acc_dev_after_removal": None if method == "dense" else acc,
                "encoder_reduction": 1 / level, "reached_vs_target": None, "max_output_error": None, "train_s": 10.0,
                "wall_s": 12.0, "heads_after": [2, 2], "ffn_after": [8, 8], "encoder_macs_after": 1e6 * level}
    pts = [point(*p) for p in points]
    return {"benchmark": "b", "smoke": False, "command": command, "date": "2026-12-04", "machine": f"m-{command}",
            "budget": budget or {"train_subset": 8, "dense_epochs": 1.0, "epochs_method": 0.5, "epochs_finetune": 0.25,
                                 "beta_start": 0.2, "distill": {}, "dev": "d", "test": "t"},
            "seconds": 60.0, "points": pts, "summary": [], "runs": {f"{m}@{lv:g}/seed{s}": {"seed": s, "src": command}
                                                                for m, lv, s, _ in points}}


def test_sst2_results_of_two_invocations_combine_into_one_table(tmp_path):
    from benchmarks.sst2_suite import combine, combine_files

    first = _sst2_result([("dense", 1.0, 0, 89.0), ("dense", 1.0, 1, 88.0), ("etp_fisher", 0.5, 0, 88.5)], "a")
    second = _sst2_result([("dense", 1.0, 1, 88.4), ("dense", 1.0, 2, 88.6), ("etp_fisher", 0.5, 1, 87.5),
                           ("etp_fisher", 0.5, 2, 88.0)], "b")
    result = combine([first, second], "combined")
    summary = {r["method"]: r for r in result["summary"]}
    assert summary["dense"]["seeds"] == [0, 1, 2]
    assert summary["dense"]["acc_dev"] == pytest.approx((89.0 + 88.4 + 88.6) / 3), "seed 1: the later run's point"
    assert summary["etp_fisher"]["acc_dev"] == pytest.approx(88.0) and summary["etp_fisher"]["acc_dev_std"] == pytest.approx(0.5)
    assert result["runs"]["dense@1/seed1"]["src"] == "b"
    assert [s["points"] for s in result["sources"]] == [["dense@1/seed0", "etp_fisher@0.5/seed0"],
                                                        ["dense@1/seed1", "dense@1/seed2", "etp_fisher@0.5/seed1",
                                                         "etp_fisher@0.5/seed2"]]
    assert result["seconds"] == 120.0 and result["machine"] == "m-a + m-b"

    paths = []
    for name, r in (("a", first), ("b", second)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(r))
    combine_files(paths, tmp_path / "out", "python benchmarks/sst2.py --combine a.json,b.json")
    text = (tmp_path / "out" / "sst2.md").read_text()
    assert "Combined from `a`" in text and "| 0.5 | etp_fisher | 0,1,2 | 88.00 ± 0.50" in text

    other = _sst2_result([("dense", 1.0, 3, 88.0)], "c", budget={"train_subset": 16})
    with pytest.raises(ForcePruneError, match="different budgets"):
        combine([first, other], "x")
    (tmp_path / "bad.json").write_text("{\"points\": []}")
    with pytest.raises(ForcePruneError, match="not an sst2 suite result"):
        combine_files([paths[0], tmp_path / "bad.json"], tmp_path / "out2", "x")
    assert not (tmp_path / "out2").exists(), "nothing is written on bad input"
