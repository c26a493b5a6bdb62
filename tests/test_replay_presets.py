"""Every replay preset reproduces, bit for bit, what the code before the schedule x sampler split did.

tests/fixtures/replay_presets.json was written by tests/helpers/replay_fixture.py at commit
"fixture of every preset" (before the refactor): accuracy matrix, replay events and replayed ids.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import replay_fixture  # noqa: E402

EXPECTED = json.loads(replay_fixture.FIXTURE.read_text())


@pytest.mark.parametrize("preset,budget", replay_fixture.CASES, ids=[replay_fixture.key(*c) for c in replay_fixture.CASES])
def test_preset_reproduces_recorded_run(preset, budget, tmp_path):
    got = replay_fixture.record(preset, budget, tmp_path)
    want = EXPECTED[replay_fixture.key(preset, budget)]
    assert got["replayed_ids"] == want["replayed_ids"]
    assert got["events"] == want["events"]
    assert got["acc"] == want["acc"] and got["baseline_acc"] == want["baseline_acc"]
    assert got["replay_tokens"] == want["replay_tokens"]


def test_retention_trace_in_results_and_report_plot(tmp_path):
    """A strength-keeping run records the predicted retention per step and plots it with the events."""
    from forgetless import experiment
    from forgetless.report import retention_trace

    cfg = replay_fixture.config("mssr_schedule", 0.5)
    cfg.replay.mssr.schedule = "retention"
    cfg.replay.mssr.calibration.every = 4  # the calibration probe: results.json, report.md, its plot
    res = experiment.run(cfg, tmp_path, progress=False)
    tr = retention_trace(res)
    steps = res["steps_per_task"]
    assert tr["step"] == list(range(steps[0] + 1, sum(steps) + 1))  # every step once the memory holds a task
    assert all(0 < m <= 1 for m in tr["mean"])
    rep = res["replay_report"]
    assert (rep["schedule"], rep["sampler"]) == ("mssr", "uniform")
    assert [e["replayed"] for e in rep["task_log"][1:]] == [32, 32]  # budget 0.5 x 8 steps x 8 samples
    assert (tmp_path / cfg.name / "plots" / "retention.png").is_file()
    assert "plots/retention.png" in (tmp_path / cfg.name / "report.md").read_text()
    cal = rep["calibration"]
    assert cal["probes"] == 4 and [r["step"] for r in cal["records"]] == [12, 16, 20, 24]  # memory from step 9
    assert cal["spearman_mean"]["constant"] is None and sum(cal["bins"]["n"]) == 4 * min(cal["rows"], 24)
    # the legacy model drives (the fixture's): the probe and its shadow fitted model's stored losses
    # are evaluation work, not the strategy's
    assert res["counters"]["eval_tokens"] > 0 and res["counters"]["extra_forward_tokens"] == 0
    assert (tmp_path / cfg.name / "plots" / "calibration.png").is_file()
    assert "Memory model calibration" in (tmp_path / cfg.name / "report.md").read_text()
    assert [e["task"] for e in rep["concentration"]] == [1, 2]
