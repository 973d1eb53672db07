"""A miniature benchmark (two methods, one epoch, 1k images) so the harness cannot rot."""
import json

import pytest

from benchmarks import suites as bench


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
